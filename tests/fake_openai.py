"""A local OpenAI-compatible chat-completions server for offline tests and benchmarks.

Real HTTP on 127.0.0.1 (aiohttp), so the real ``openai`` client is exercised end to end.
Responses are scripted per request id (the ``X-E5X-Request-Id`` header e5x sends) and any
arrival of a request can be turned into a fault:

    "429"        HTTP 429 with ``Retry-After``
    "500"        HTTP 500
    "401"        HTTP 401 (bad key: not retryable, stops the run)
    "slow"       answer only after ``slow_s`` seconds (past the client's timeout)
    "drop"       close the connection without answering
    "malformed"  HTTP 200 whose body is not JSON
    "length"     a truncated answer with finish_reason "length"
    "refusal"    a refusal (content null, ``refusal`` set)
    "429-long"   HTTP 429 with a ``Retry-After`` of ``long_retry_after`` seconds

and any 200 can take one of the odd shapes OpenAI-compatible servers return (``SHAPES``):
content as a list of parts, null content, ``"message": null``, usage missing or
non-numeric, and so on.

Run as a script (``python tests/fake_openai.py --latency 0.1``) it serves in its own
process and prints ``PORT <n>``; the benchmark uses that so server CPU is not counted
against the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

# Fields of one example per task type (kept here so the server needs nothing from e5x).
FIELDS: dict[str, tuple[str, ...]] = {
    "short_long": ("user_query", "positive_document", "hard_negative_document"),
    "long_short": ("input_text", "label", "misleading_label"),
    "short_short": ("input", "positive_document"),
    "long_long": ("input", "positive_document"),
    "sts": ("S1", "S2", "S3"),
    "bitext": ("S1", "S2", "S3"),
}


def parse_request_id(rid: str) -> tuple[str, str, int]:
    """``"example-short_long-000012"`` -> ("example", "short_long", 12)."""
    step, rest = rid.split("-", 1)
    task_type, index = rest.rsplit("-", 1)
    return step, task_type, int(index)


def default_content(rid: str, body: dict[str, Any]) -> str:
    """A valid answer for the request: a task list for brainstorm, an example otherwise."""
    try:
        step, task_type, index = parse_request_id(rid)
    except ValueError:
        return json.dumps({"answer": "ok"})
    if step == "brainstorm":
        # Two tasks shared by every brainstorm answer of a type, so pools really dedup.
        tasks = [f"Retrieve documents for common {task_type} need {k}." for k in range(2)]
        tasks += [f"Task {k} of {task_type} brainstorm {index}: find relevant text." for k in range(4)]
        return json.dumps({"tasks": tasks})
    fields = FIELDS.get(task_type, ("text",))
    return json.dumps({f: f"{f} text number {index} of {task_type}, written for {rid}." for f in fields})


def _parts(c: str | None) -> list[dict[str, Any]]:
    half = len(c or "") // 2
    return [{"type": "text", "text": (c or "")[:half]}, {"type": "text", "text": (c or "")[half:]}]


# name -> edit of a good 200 payload (in place). The content the test expects the client to
# store is the good content for "parts"/"parts-str"/"usage-*", and none for the others.
SHAPES: dict[str, Callable[[dict[str, Any]], None]] = {
    "parts": lambda p: p["choices"][0]["message"].update(content=_parts(p["choices"][0]["message"]["content"])),
    "parts-str": lambda p: p["choices"][0]["message"].update(content=[p["choices"][0]["message"]["content"]]),
    "parts-image": lambda p: p["choices"][0]["message"].update(
        content=[{"type": "image_url", "image_url": {"url": "data:,"}}]
    ),
    "content-null": lambda p: p["choices"][0]["message"].update(content=None),
    "content-empty": lambda p: p["choices"][0]["message"].update(content=""),
    "content-number": lambda p: p["choices"][0]["message"].update(content=42),
    "tool-call": lambda p: p["choices"][0]["message"].update(
        content=None, tool_calls=[{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    ),
    "reasoning-only": lambda p: p["choices"][0]["message"].update(content=None, reasoning_content="Let me think."),
    "reasoning-and-content": lambda p: p["choices"][0]["message"].update(reasoning_content="Thought."),
    "message-null": lambda p: p["choices"][0].update(message=None),
    "message-missing": lambda p: p["choices"][0].pop("message"),
    "message-string": lambda p: p["choices"][0].update(message="hello"),
    "choice-string": lambda p: p.update(choices=["hello"]),
    "refusal-parts": lambda p: p["choices"][0]["message"].update(
        content=None, refusal=[{"type": "text", "text": "I can't."}]
    ),
    "finish-number": lambda p: p["choices"][0].update(finish_reason=3),
    "usage-missing": lambda p: p.pop("usage"),
    "usage-null": lambda p: p.update(usage=None),
    "usage-string": lambda p: p["usage"].update(prompt_tokens="many", completion_tokens="12"),
    "usage-negative": lambda p: p["usage"].update(completion_tokens=-5),
    "usage-list": lambda p: p.update(usage=[1, 2, 3]),
    "usage-float": lambda p: p["usage"].update(prompt_tokens=10.5, completion_tokens=float("inf")),
    "model-object": lambda p: p.update(model={"name": "x"}, id=["odd"]),
}
# Bodies that are not a chat completion at all: retried as "malformed".
BAD_BODIES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "choices-empty": lambda p: {**p, "choices": []},
    "choices-missing": lambda p: {k: v for k, v in p.items() if k != "choices"},
    "error-200": lambda p: {"error": {"message": "overloaded", "type": "server_error"}},
    "body-list": lambda p: [p],
    "body-null": lambda p: None,
}


@dataclass
class Arrival:
    rid: str
    t: float
    fault: str | None
    body: dict[str, Any]


@dataclass
class FakeOpenAI:
    """The server. ``faults[rid]`` is a list consumed one entry per arrival of ``rid``."""

    latency: float = 0.0
    latency_fn: Callable[[str], float] | None = None  # per-request latency, overrides latency
    slow_s: float = 5.0
    retry_after: float = 0.05
    long_retry_after: float = 3600.0
    faults: dict[str, list[str | None]] = field(default_factory=dict)
    fault_fn: Callable[[str, int], str | None] | None = None  # (rid, nth arrival) -> fault
    content_fn: Callable[[str, dict[str, Any]], str] = default_content
    # Called on every arrival; returns True when the client had already stored an answer
    # for this id (the kill-and-resume test points it at the response log).
    already_stored: Callable[[str], bool] | None = None
    record_bodies: bool = True

    arrivals: list[Arrival] = field(default_factory=list)
    answered: Counter[str] = field(default_factory=Counter)  # rid -> good 200 answers sent
    answer_times: list[tuple[str, float]] = field(default_factory=list)  # (rid, monotonic time)
    faults_served: Counter[str] = field(default_factory=Counter)
    billed_tokens: int = 0  # usage of every completion generated, delivered or not
    resent_after_stored: list[str] = field(default_factory=list)
    _seen: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))

    # ---- lifecycle -------------------------------------------------------------------
    def start(self, port: int = 0) -> str:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(port,), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self.base_url

    def _serve(self, port: int) -> None:
        # The "drop" fault raises in the handler on purpose; keep aiohttp from logging it.
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._runner = self._loop.run_until_complete(self._start_site(port))
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    async def _start_site(self, port: int) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
        await site.start()
        self.port = runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        return runner

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> FakeOpenAI:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- views for tests --------------------------------------------------------------
    def ids_seen(self) -> Counter[str]:
        return Counter(a.rid for a in self.arrivals)

    # ---- the handler --------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw)
        rid = request.headers.get("X-E5X-Request-Id", "")
        nth = self._seen[rid]
        self._seen[rid] += 1
        if self.already_stored is not None and self.already_stored(rid):
            self.resent_after_stored.append(rid)
        queue = self.faults.get(rid)
        fault = queue.pop(0) if queue else None
        if fault is None and self.fault_fn is not None:
            fault = self.fault_fn(rid, nth)
        self.arrivals.append(Arrival(rid, time.monotonic(), fault, body if self.record_bodies else {}))
        if fault:
            self.faults_served[fault] += 1
        delay = self.latency_fn(rid) if self.latency_fn is not None else self.latency
        if delay:
            await asyncio.sleep(delay)

        if fault in ("429", "429-long"):
            wait = self.retry_after if fault == "429" else self.long_retry_after
            return web.json_response(
                {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
                status=429,
                headers={"Retry-After": f"{wait:g}"},
            )
        if fault == "401":
            return web.json_response(
                {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}, status=401
            )
        if fault == "500":
            return web.json_response({"error": {"message": "internal error", "type": "server_error"}}, status=500)
        if fault == "drop":
            assert request.transport is not None
            request.transport.abort()  # RST, no response bytes at all
            raise ConnectionResetError("dropped on purpose")
        if fault == "malformed":
            return web.Response(body=b'{"id": "chatcmpl-x", "choices": [ {"mess', content_type="application/json")
        if fault == "slow":
            await asyncio.sleep(self.slow_s)

        content: str | None = self.content_fn(rid, body)
        refusal = None
        finish = "stop"
        if fault == "length":
            content, finish = content[: max(1, len(content) // 2)], "length"
        elif fault == "refusal":
            content, refusal = None, "I'm sorry, but I can't help with that."
        prompt_chars = sum(len(m.get("content") or "") for m in body.get("messages", []))
        completion_tokens = max(1, len(content or refusal or "") // 4)
        payload = {
            "id": f"chatcmpl-{rid}-{nth}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": refusal},
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": max(1, prompt_chars // 4),
                "completion_tokens": completion_tokens,
                "total_tokens": max(1, prompt_chars // 4) + completion_tokens,
            },
        }
        self.billed_tokens += payload["usage"]["total_tokens"]
        out: Any = payload
        if fault in SHAPES:
            SHAPES[fault](payload)
        elif fault in BAD_BODIES:
            out = BAD_BODIES[fault](payload)
        if fault != "slow" and fault not in BAD_BODIES:
            self.answered[rid] += 1
            self.answer_times.append((rid, time.monotonic()))
        return web.Response(body=json.dumps(out).encode(), content_type="application/json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    args = ap.parse_args()
    server = FakeOpenAI(latency=args.latency, record_bodies=False)
    server.start(args.port)
    print(f"PORT {server.port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
