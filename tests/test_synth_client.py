"""The runner over the ChatClient seam: an in-memory client, no HTTP.

Transient faults are retried (Retry-After honoured, every attempt logged), a rejected
request is given up alone, an auth fault stops the run; answers are stored once, and the
runner closes its client."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

from test_synth import make_cfg

from e5x.synth import build_plan
from e5x.synth.client import ChatClient, FatalFault, TransientFault
from e5x.synth.runner import Runner, Stats
from e5x.synth.store import AppendLog


class MemoryClient:
    """Answers every request, after the faults ``script`` lists for its id."""

    def __init__(self, script: dict[str, list[Exception]]) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.closed = False

    async def chat(self, body: dict[str, Any], *, request_id: str) -> Any:
        self.bodies.append((request_id, body))
        await asyncio.sleep(0)
        faults = self.script.get(request_id)
        if faults:
            raise faults.pop(0)
        text = json.dumps({"tasks": [f"task of {request_id}"]})
        return {
            "id": f"resp-{request_id}",
            "model": body["model"],
            "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5},
        }

    async def aclose(self) -> None:
        self.closed = True


def run(tmp_path: Path, client: ChatClient, **cfg_kw: Any) -> tuple[Runner, list[str], list[dict], list[dict]]:
    cfg = make_cfg(None, concurrency=2, **cfg_kw)
    plan = build_plan(cfg)
    logs = [AppendLog(tmp_path / n, fsync="never") for n in ("responses.jsonl", "errors.jsonl", "calls.jsonl")]
    runner = Runner(cfg, plan.types, *logs[:2], Stats(), logs[2], say=lambda _: None, client=client)

    async def main() -> None:
        try:
            await runner.run(plan.brainstorm, cfg.brainstorm)
        finally:
            await runner.aclose()

    asyncio.run(main())
    for log in logs:
        log.close()
    answers, errors = ([json.loads(x) for x in (tmp_path / n).read_text().splitlines()]
                       for n in ("responses.jsonl", "errors.jsonl"))  # fmt: skip
    return runner, [r.id for r in plan.brainstorm], answers, errors


def test_transient_faults_are_retried_and_a_bad_request_is_given_up_alone(tmp_path: Path):
    ids = [r.id for r in build_plan(make_cfg(None)).brainstorm]
    assert len(ids) >= 3
    client = MemoryClient({
        ids[0]: [TransientFault("rate_limited", "slow down", retry_after=0.01), TransientFault("http_503", "busy")],
        ids[1]: [TransientFault("timeout", "no answer")],
        ids[2]: [FatalFault("bad_request", "context too long")],
    })  # fmt: skip
    runner, planned, answers, errors = run(tmp_path, client)
    assert client.closed and runner.fatal is None and runner.stop_reason is None
    assert sorted(a["id"] for a in answers) == sorted(set(planned) - {ids[2]})
    assert Counter(i for i, _ in client.bodies) == {i: 3 if i == ids[0] else 2 if i == ids[1] else 1 for i in planned}
    a0 = next(a for a in answers if a["id"] == ids[0])
    assert (
        a0["attempts"] == 3
        and a0["usage"]["total_tokens"] == 15
        and a0["content"] == '{"tasks": ["task of %s"]}' % ids[0]
    )
    assert [
        (e["id"], e["attempt"], e["kind"]) for e in sorted(errors, key=lambda e: (e["id"], e["attempt"]))
    ] == sorted(
        [(ids[0], 1, "rate_limited"), (ids[0], 2, "http_503"), (ids[1], 1, "timeout"), (ids[2], 1, "bad_request")]
    )
    assert next(e for e in errors if e["kind"] == "rate_limited")["retry_after_s"] == 0.01
    assert runner.stats.failed == {"bad_request": 1} and runner.stats.retry_after == [0.01]
    assert runner.stats.answered_now == len(planned) - 1 and runner.stats.calls == len(client.bodies)


def test_an_auth_fault_stops_the_run(tmp_path: Path):
    ids = [r.id for r in build_plan(make_cfg(None)).brainstorm]
    client = MemoryClient({i: [FatalFault("auth", "bad key")] for i in ids})
    runner, planned, answers, errors = run(tmp_path, client)
    assert runner.fatal == "auth: bad key" and "fatal API error (auth)" in (runner.stop_reason or "")
    assert answers == [] and len(client.bodies) <= 2 and {e["kind"] for e in errors} == {"auth"}
