"""The chat-client seam: how the runner sends one chat request, whatever the endpoint.

``ChatClient`` sends one OpenAI-style chat-completions body and returns the decoded JSON
answer, or raises a typed fault: ``TransientFault`` for what a retry may fix (429, 5xx,
timeouts, dropped connections, an unparseable body), ``FatalFault`` for what it cannot
(bad key, unknown model, a rejected request). Queueing, limits, retries and budgets are
the runner's; a client never retries. ``OpenAIChatClient`` is the OpenAI/Azure
implementation over the ``openai`` package.
"""

from __future__ import annotations

import email.utils
import json
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, Protocol

from e5x.synth.config import SynthConfig

if TYPE_CHECKING:
    from openai import AsyncOpenAI

REQUEST_ID_HEADER = "X-E5X-Request-Id"

__all__ = [
    "REQUEST_ID_HEADER",
    "ChatClient",
    "FatalAPIError",
    "FatalFault",
    "OpenAIChatClient",
    "TransientFault",
    "retry_after_seconds",
]


class FatalAPIError(RuntimeError):
    """An error no retry can fix (bad key, unknown model): the run stops."""


class TransientFault(Exception):
    """A failed attempt that a retry may fix.

    ``kind`` names it in errors.jsonl and the summary: ``rate_limited``, ``http_<code>``,
    ``timeout``, ``connection`` or ``malformed``. ``retry_after`` is the server's
    Retry-After in seconds, if it sent one."""

    def __init__(self, kind: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.retry_after = retry_after


class FatalFault(Exception):
    """A failed attempt that no retry fixes.

    ``auth`` (401/403) and ``not_found`` (404: unknown model or deployment) stop the run;
    ``bad_request`` (400/422) gives up this request only."""

    def __init__(self, kind: Literal["auth", "not_found", "bad_request"], detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class ChatClient(Protocol):
    async def chat(self, body: dict[str, Any], *, request_id: str) -> Any:
        """POST ``body`` to chat/completions; the decoded JSON answer, or a fault."""
        ...

    async def aclose(self) -> None:
        """Release connections; the client is not used again."""
        ...


class ResponseHeaders(Protocol):
    """Response headers as ``retry_after_seconds`` reads them (httpx's ``Headers``, a dict)."""

    def get(self, key: str, /) -> str | None: ...


def retry_after_seconds(headers: ResponseHeaders | None) -> float | None:
    """Seconds from ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(ra)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


class OpenAIChatClient:
    """OpenAI or Azure OpenAI (``cfg.endpoint``) through the ``openai`` package.

    One pooled keep-alive connection per concurrency slot; the SDK's own retries are off
    (``max_retries=0``) so that every retry is the runner's: counted, logged, Retry-After
    honoured."""

    def __init__(self, cfg: SynthConfig) -> None:
        import openai

        ep = cfg.endpoint
        key = ep.api_key()
        if key is None:
            raise FatalAPIError(f"environment variable {ep.key_env} (endpoint.api_key_env) is not set")
        n = cfg.concurrency
        limits = _httpx().Limits(max_connections=n, max_keepalive_connections=n)
        http = _http_client(cfg.http_backend)(limits=limits, timeout=cfg.timeout_s)
        common: dict[str, Any] = dict(
            api_key=key, max_retries=0, timeout=cfg.timeout_s, default_headers=ep.headers or None, http_client=http
        )
        self._client: AsyncOpenAI
        if ep.provider == "azure":
            # The SDK's overloads want exactly one of azure_endpoint/base_url as a str; its
            # implementation takes both optional (neither: AZURE_OPENAI_ENDPOINT; both: its
            # own ValueError), which is what passing the config through relies on.
            self._client = openai.AsyncAzureOpenAI(  # type: ignore[call-overload]
                azure_endpoint=ep.azure_endpoint, api_version=ep.api_version, base_url=ep.base_url, **common
            )
        else:
            self._client = openai.AsyncOpenAI(base_url=ep.base_url, **common)

    async def chat(self, body: dict[str, Any], *, request_id: str) -> Any:
        import openai

        try:
            # client.post skips the SDK's per-call TypedDict transform and pydantic parsing
            # (half of its CPU per request); routing, auth, Azure deployment URLs and error
            # mapping are still the SDK's. We parse the body ourselves (malformed -> retry).
            raw = await self._client.post(
                "/chat/completions",
                body=body,
                cast_to=_httpx().Response,
                options={"headers": {REQUEST_ID_HEADER: request_id}},
            )
            content = raw.content
        except openai.APIStatusError as e:
            code = e.status_code
            ra = retry_after_seconds(e.response.headers)
            if code == 429:
                raise TransientFault("rate_limited", str(e), ra) from e
            if code in (401, 403):
                raise FatalFault("auth", str(e)) from e
            if code == 404:
                raise FatalFault("not_found", str(e)) from e
            if code in (400, 422):
                raise FatalFault("bad_request", str(e)) from e
            raise TransientFault(f"http_{code}", str(e), ra) from e
        except openai.APIConnectionError as e:  # APITimeoutError included
            raise TransientFault(_transport_kind(e), f"{e}: {e.__cause__!r}") from e
        try:
            return json.loads(content)
        except (ValueError, RecursionError) as e:
            raise TransientFault("malformed", f"unparseable response body ({e}): {content[:200]!r}") from None

    async def aclose(self) -> None:
        await self._client.close()


def _httpx() -> ModuleType:
    """The SDK's HTTP library: ``httpx2`` for openai >= 3, ``httpx`` before."""
    try:
        import httpx2

        return httpx2
    except ImportError:
        # Only one of the two is installed, whichever the openai version depends on.
        import httpx  # type: ignore[import-not-found,unused-ignore]

        return httpx


def _transport_kind(exc: BaseException) -> str:
    """The kind, "timeout" or "connection", from the root cause: the SDK's aiohttp transport reports a
    dropped connection as a connect timeout, which would mislabel the fault."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    root = chain[-1]
    if isinstance(root, TimeoutError) or "Timeout" in type(root).__name__:
        return "timeout"
    if isinstance(root, (ConnectionError, OSError)) or "Disconnect" in type(root).__name__:
        return "connection"
    return "timeout" if any("Timeout" in type(x).__name__ for x in chain) else "connection"


def _http_client(backend: str) -> Any:
    """The openai SDK's aiohttp transport costs ~40% less CPU per request than httpx."""
    import openai

    if backend == "aiohttp" or backend == "auto":
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            if backend == "aiohttp":
                raise
        else:
            aio = getattr(openai, "DefaultAioHttpClient", None)  # openai >= 1.80
            if aio is not None:
                return aio
            if backend == "aiohttp":
                raise RuntimeError("http_backend='aiohttp' needs openai >= 1.80")
    return openai.DefaultAsyncHttpxClient
