"""e5x.synth against a hostile endpoint: every response shape is stored or retried, never
raised; resume survives anything the log can hold; a type whose brainstorm answers are all
unusable asks again; budgets hold across kill -9; Retry-After is capped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from fake_openai import BAD_BODIES, SHAPES, FakeOpenAI, default_content

from e5x.synth import SynthConfig, build_plan, synthesize
from e5x.synth.response import content_text, parse_completion, token_count

KEY_ENV = "E5X_TEST_FAKE_KEY"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    s = FakeOpenAI()
    s.start()
    yield s
    s.stop()


def make_cfg(server: FakeOpenAI, **kw) -> SynthConfig:
    cfg = SynthConfig(
        n_examples=kw.pop("n_examples", 24),
        task_weights=kw.pop("task_weights", {"sts": 1}),
        tasks_per_brainstorm=5,
        examples_per_task=1.0,
        progress=False,
        concurrency=kw.pop("concurrency", 4),
        timeout_s=2.0,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        **kw,
    )
    cfg.endpoint.base_url = server.base_url
    cfg.endpoint.api_key_env = KEY_ENV
    cfg.brainstorm.models = cfg.examples.models = {"fake-model": 1}
    cfg.prices = {"fake-model": (1.0, 2.0)}
    return cfg


def log_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "responses.jsonl").read_text().splitlines()]


# Shapes whose text the client must recover as the good content; the rest hold no usable text.
USABLE = {"parts", "parts-str", "finish-number", "model-object", "reasoning-and-content"} | {
    s for s in SHAPES if s.startswith("usage-")
}


def test_every_response_shape_is_stored_with_a_reason_and_resume_is_clean(server: FakeOpenAI, tmp_path: Path):
    shapes = sorted(SHAPES)
    bad = sorted(BAD_BODIES)
    cfg = make_cfg(server, n_examples=len(shapes) + len(bad) + 2)
    ids = build_plan(cfg).example_ids()
    shape_of = dict(zip(ids, shapes))
    for rid, shape in shape_of.items():
        server.faults[rid] = [shape]
    bad_of = dict(zip(ids[len(shapes) :], bad))
    for rid, b in bad_of.items():
        server.faults[rid] = [b]  # then a good answer
    run = tmp_path / "run"
    s = synthesize(cfg, run)
    # Every request got exactly one stored answer; bodies that are no completion were retried.
    assert s["complete"], s
    recs = {r["id"]: r for r in log_records(run)}
    assert sorted(recs) == sorted(ids)
    assert s["errors_this_session"] == {"malformed": len(bad)}
    assert all(server.ids_seen()[rid] == 2 for rid in bad_of)
    for rid, shape in shape_of.items():
        r = recs[rid]
        assert r["content"] is None or isinstance(r["content"], str), shape
        for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
            assert isinstance(r["usage"][k], int) and r["usage"][k] >= 0, (shape, r["usage"])
        assert isinstance(r["cost_usd"], float)
        if shape in USABLE:
            assert r["content"] == default_content(rid, {}) and r["rejected"] is None, (shape, r)
        else:
            assert r["rejected"], (shape, r)
    assert recs[shape_of_name(shape_of, "message-null")]["rejected"] == "the choice has no message"
    assert recs[shape_of_name(shape_of, "refusal-parts")]["refusal"] == "I can't."
    assert recs[shape_of_name(shape_of, "refusal-parts")]["rejected"] == "refusal"
    assert recs[shape_of_name(shape_of, "tool-call")]["rejected"] == "a tool call instead of content"
    assert recs[shape_of_name(shape_of, "parts-image")]["content_raw"][0]["type"] == "image_url"
    assert recs[shape_of_name(shape_of, "reasoning-only")]["reasoning"] == "Let me think."
    assert recs[shape_of_name(shape_of, "reasoning-only")]["rejected"].startswith("reasoning only")
    assert recs[shape_of_name(shape_of, "reasoning-and-content")]["reasoning"] == "Thought."
    for shape in ("usage-missing", "usage-string", "usage-list", "usage-null", "usage-negative"):
        assert recs[shape_of_name(shape_of, shape)]["usage_estimated"] is True, shape
    assert recs[shape_of_name(shape_of, "usage-string")]["usage"]["completion_tokens"] == 12
    assert recs[shape_of_name(shape_of, "usage-string")]["usage_raw"]["prompt_tokens"] == "many"
    assert sum(s["rejected_answers"].values()) == len(shapes) - len(USABLE)
    # A resume reads all of it back, counts the same and sends nothing.
    n = len(server.arrivals)
    s2 = synthesize(cfg, run, resume=True)
    assert s2["complete"] and len(server.arrivals) == n
    assert s2["rejected_answers"] == s["rejected_answers"] and s2["cost_usd"] == pytest.approx(s["cost_usd"])


def shape_of_name(shape_of: dict[str, str], name: str) -> str:
    return next(rid for rid, s in shape_of.items() if s == name)


def test_resume_survives_anything_the_log_can_hold(server: FakeOpenAI, tmp_path: Path):
    """Logs from older versions (content as a list of parts) or hand edits must not crash a resume."""
    cfg = make_cfg(server, n_examples=8, task_weights={"short_long": 1})
    run = tmp_path / "run"
    s = synthesize(make_cfg(server, n_examples=8, task_weights={"short_long": 1}, max_requests=2), run)
    assert s["brainstorm"]["answered"] == s["brainstorm"]["planned"] == 2 and s["examples"]["answered"] == 0
    log = run / "responses.jsonl"
    recs = log_records(run)
    # What an older version stored for a list-of-parts answer; it used to crash every resume.
    recs[0]["content"] = [{"type": "text", "text": recs[0]["content"]}]
    recs[1]["usage"] = {"prompt_tokens": "many", "completion_tokens": None}
    recs[1]["cost_usd"] = "free"
    junk = [
        {"id": ["not", "a", "string"], "step": "examples"},
        {"no_id": True},
        {"id": "examples-short_long-999999", "step": "brainstorm", "task_type": None, "usage": [1]},
        {"id": "brainstorm-elsewhere-000000", "step": "brainstorm", "task_type": "short_long", "content": {"x": 1}},
    ]
    lines = [json.dumps(r) for r in [*recs, *junk]] + ["[1, 2, 3]", "null", "42"]
    log.write_text("\n".join(lines) + "\n")
    s = synthesize(cfg, run, resume=True)
    assert s["complete"], s
    pool = json.loads((run / "pools.json").read_text())["pools"]["short_long"]
    first = parse_tasks(recs[0]["content"][0]["text"])
    assert set(first) <= set(pool)  # the list-of-parts answer fed the pool
    rows = [r for r in map(json.loads, log.read_text().splitlines()) if isinstance(r, dict)]
    stored = Counter(r["id"] for r in rows if isinstance(r.get("id"), str))
    assert all(stored[i] == 1 for i in build_plan(cfg).example_ids())


def parse_tasks(content: str) -> list[str]:
    return json.loads(content)["tasks"]


def test_a_type_with_only_unusable_brainstorm_answers_asks_again(server: FakeOpenAI, tmp_path: Path):
    planned = build_plan(make_cfg(server, n_examples=6, task_weights={"long_short": 1})).brainstorm
    assert len(planned) == 2
    garbage = {r.id for r in planned} | {"brainstorm-long_short-000002"}  # the first retry is garbage too

    def content(rid: str, body: dict) -> str:
        return "Sure! Here are some tasks: (none)" if rid in garbage else default_content(rid, body)

    server.content_fn = content
    run = tmp_path / "run"
    s = synthesize(make_cfg(server, n_examples=6, task_weights={"long_short": 1}), run)
    assert s["complete"], s
    seen = server.ids_seen()
    assert seen["brainstorm-long_short-000002"] == 1 and seen["brainstorm-long_short-000003"] == 1
    assert "brainstorm-long_short-000004" not in seen  # no more once the pool has tasks
    assert s["pools"]["long_short"]["size"] > 0 and s["brainstorm_exhausted"] == {}
    assert s["brainstorm"] == {"planned": 2, "answered": 2, "retries_answered": 2}
    # A resume rebuilds the very same pool from the log (prompts must not change).
    pool = json.loads((run / "pools.json").read_text())["pools"]["long_short"]
    n = len(server.arrivals)
    assert synthesize(make_cfg(server, n_examples=6, task_weights={"long_short": 1}), run, resume=True)["complete"]
    assert len(server.arrivals) == n and json.loads((run / "pools.json").read_text())["pools"]["long_short"] == pool


def test_spent_brainstorm_retries_name_the_type_and_a_resume_can_grant_more(server: FakeOpenAI, tmp_path: Path, capsys):
    server.content_fn = lambda rid, body: "no json here" if rid.startswith("brainstorm") else default_content(rid, body)
    kw = dict(n_examples=6, task_weights={"long_short": 1, "sts": 1}, brainstorm_retries=2)
    run = tmp_path / "run"
    s = synthesize(make_cfg(server, **kw), run)
    assert not s["complete"] and s["brainstorm_exhausted"] == {"long_short": {"answers": 3, "retries": 2}}
    assert s["examples"]["answered"] == 3  # sts went ahead
    assert "task type 'long_short': none of its 3 brainstorm answers" in capsys.readouterr().err
    n = len(server.arrivals)
    # Same budget: nothing is sent, the summary still names it.
    s = synthesize(make_cfg(server, **kw), run, resume=True)
    assert len(server.arrivals) == n and "long_short" in s["brainstorm_exhausted"]
    # More budget and a server that answers properly: the run finishes.
    server.content_fn = default_content
    s = synthesize(make_cfg(server, **{**kw, "brainstorm_retries": 3}), run, resume=True)
    assert s["complete"] and len(server.arrivals) == n + 1 + 3


def test_retry_after_is_capped_and_logged(server: FakeOpenAI, tmp_path: Path, monkeypatch):
    from e5x.synth import runner

    monkeypatch.setattr(runner, "LONG_PAUSE_S", 0.1)
    server.long_retry_after = 3600
    cfg = make_cfg(server, n_examples=4, retry_after_max_s=0.2)
    rid = build_plan(cfg).example_ids()[0]
    server.faults[rid] = ["429-long"]
    t0 = time.monotonic()
    said: list[str] = []
    s = synthesize(cfg, tmp_path / "run", echo=said.append)
    assert "e5x synth: rate limited; every request waits 0.2 s (asked 3600 s, capped by retry_after_max_s)" in said
    assert s["complete"] and time.monotonic() - t0 < 10
    assert s["retry_after"] == {"received": 1, "max_s": 3600.0, "capped": 1, "cap_s": 0.2}
    err = json.loads((tmp_path / "run" / "errors.jsonl").read_text())
    assert err["retry_after_s"] == 3600 and err["retry_after_capped_s"] == 0.2
    times = [a.t for a in server.arrivals if a.rid == rid]
    assert 0.2 <= times[1] - times[0] < 5


def test_calls_lost_in_flight_count_against_the_caps_on_resume(server: FakeOpenAI, tmp_path: Path):
    run = tmp_path / "run"
    cfg = make_cfg(server, n_examples=8, max_requests=3)
    synthesize(cfg, run)
    # What a kill -9 leaves: reservations whose calls never settled.
    with open(run / "calls.jsonl", "a") as f:
        for k in range(2):
            f.write(json.dumps({"call": f"dead-{k}", "id": "x", "attempt": 1, "tokens": 5000, "cost_usd": 0.5}) + "\n")
    s = synthesize(make_cfg(server, n_examples=8, max_requests=5, max_tokens_total=10**6), run, resume=True)
    assert s["budget"]["calls"] == {"sent": 5, "stored": 3, "lost_in_flight": 2}
    assert s["budget"]["tokens"]["reserved"] == 10000 and s["budget"]["cost_usd"]["reserved"] == 1.0
    assert len(server.arrivals) == 3 and "max_requests=5" in s["stop_reason"]
    s = synthesize(make_cfg(server, n_examples=8, max_cost_usd=1.0), run, resume=True)
    assert len(server.arrivals) == 3 and "max_cost_usd" in s["stop_reason"]


def test_a_deleted_calls_log_does_not_reset_the_request_cap(server: FakeOpenAI, tmp_path: Path):
    run = tmp_path / "run"
    server.faults["examples-sts-000000"] = ["500", "500"]
    s = synthesize(make_cfg(server, n_examples=8, max_requests=5), run)
    assert len(server.arrivals) == 5 and s["budget"]["calls"]["sent"] == 5
    (run / "calls.jsonl").unlink()
    s = synthesize(make_cfg(server, n_examples=8, max_requests=5), run, resume=True)
    assert len(server.arrivals) == 5 and s["budget"]["calls"]["sent"] == 5  # answers and errors still count


def _lines(path: Path) -> list[bytes]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return [x for x in data[: data.rfind(b"\n") + 1].splitlines() if x.strip()]


@pytest.mark.parametrize("cap_flag, cap", [("--max-requests", 40), ("--max-tokens-total", 60_000)])
def test_caps_hold_across_sigkill(tmp_path: Path, cap_flag: str, cap: int):
    conc = 8
    run = tmp_path / "run"
    server = FakeOpenAI(latency=0.15)
    server.start()
    cmd = [
        sys.executable, "-m", "e5x", "synth", "--out", str(run), "-n", "200", "--seed", "1",
        "--task-weight", "sts=1", "--base-url", server.base_url, "--api-key-env", KEY_ENV, "--model", "m",
        "--concurrency", str(conc), cap_flag, str(cap), "--max-tokens", "100", "--timeout", "10", "--no-progress",
    ]  # fmt: skip
    env = dict(os.environ, **{KEY_ENV: "sk-test"})
    kills = 0
    try:
        for round_ in range(3):
            proc = subprocess.Popen(cmd + (["--resume"] if round_ else []), env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            target = len(server.arrivals) + 6
            deadline = time.monotonic() + 60
            while proc.poll() is None and len(server.arrivals) < target and time.monotonic() < deadline:
                time.sleep(0.005)
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGKILL)  # with calls in flight (the server takes 0.15 s)
            proc.wait()
            kills += 1
        final = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=120)
    finally:
        server.stop()
    assert kills == 3
    assert final.returncode == 3, final.stderr  # stopped by the cap
    summary = json.loads((run / "summary.json").read_text())
    b = summary["budget"]
    print(f"{cap_flag}={cap} concurrency={conc} kills={kills} calls billed={len(server.arrivals)} "
          f"tokens billed by the server={server.billed_tokens} summary={b}")  # fmt: skip
    assert b["calls"]["lost_in_flight"] > 0 and summary["stop_reason"].startswith("budget:")
    assert b["calls"]["stored"] == len({json.loads(x)["id"] for x in _lines(run / "responses.jsonl")})
    assert b["calls"]["sent"] >= len(server.arrivals)  # every call was reserved before it was sent
    if cap_flag == "--max-requests":
        assert len(server.arrivals) <= cap == b["calls"]["sent"]
    else:
        # Completions here are shorter than --max-tokens and the server counts chars/4, so
        # the reservations bound every call: even calls lost at a kill stay inside the cap.
        assert server.billed_tokens <= b["tokens"]["billed"] + b["tokens"]["reserved"] <= cap
        assert b["tokens"]["billed"] > cap // 4  # waiting on in-flight calls, not stopping early


def test_response_helpers_are_total():
    assert content_text([{"type": "text", "text": "a"}, "b", {"type": "image_url"}, {"text": {"value": "c"}}]) == "abc"
    assert content_text([{"type": "image_url"}]) is None and content_text(3) is None and content_text({}) is None
    assert [token_count(v) for v in (3, "4", 2.2, -1, True, "x", None, float("nan"))] == [
        3,
        4,
        3,
        None,
        None,
        None,
        None,
        None,
    ]
    for body in ({"choices": [{"message": {"content": "hi"}}]}, {"choices": [None]}, {"choices": [{"message": []}]}):
        c = parse_completion(body, 100)
        assert c.prompt_tokens == 100 and c.completion_tokens >= 1 and c.usage_estimated
    assert parse_completion({"choices": [None]}, 1).rejected == "the choice is not an object"
    with pytest.raises(ValueError, match="no choices"):
        parse_completion({"choices": []}, 1)


def test_resume_survives_random_records_in_every_log(server: FakeOpenAI, tmp_path: Path):
    """Seeded fuzz: any JSON value in any field of the three logs; a resume must finish."""
    import random

    rng = random.Random(16)
    cfg = make_cfg(server, n_examples=10, task_weights={"short_long": 1, "sts": 1})
    run = tmp_path / "run"
    synthesize(make_cfg(server, n_examples=10, task_weights={"short_long": 1, "sts": 1}, max_requests=3), run)
    plan = build_plan(cfg)
    ids = [r.id for r in plan.brainstorm] + plan.example_ids()

    def value(depth: int = 0):
        kinds = ["none", "bool", "int", "float", "str", "id"] + (["list", "dict"] if depth < 2 else [])
        k = rng.choice(kinds)
        if k == "list":
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        if k == "dict":
            return {rng.choice(["text", "type", "value", "x"]): value(depth + 1) for _ in range(rng.randint(0, 3))}
        return {"none": None, "bool": rng.random() < 0.5, "int": rng.randint(-10, 10**6), "float": rng.uniform(-1, 1e6),
                "str": rng.choice(["", "x", "brainstorm", "sts", '{"tasks": ["Find a thing."]}', "\x00"]),
                "id": rng.choice(ids)}[k]  # fmt: skip

    fields = ["id", "step", "task_type", "content", "refusal", "usage", "cost_usd", "call", "rejected", "finish_reason"]
    for name, n in (("responses.jsonl", 60), ("errors.jsonl", 30), ("calls.jsonl", 30)):
        with open(run / name, "a") as f:
            for _ in range(n):
                rec = {k: value() for k in fields if rng.random() < 0.8}
                if name == "calls.jsonl":
                    rec.update(tokens=value(), call=rng.choice([f"c{rng.randint(0, 5)}", value()]))
                f.write(json.dumps(rec) + "\n")
    s = synthesize(cfg, run, resume=True)  # must not raise
    assert s["budget"]["calls"]["sent"] >= 3
    recs = [r for r in map(json.loads, (run / "responses.jsonl").read_text().splitlines()) if isinstance(r, dict)]
    stored = {r["id"] for r in recs if isinstance(r.get("id"), str)}
    # Everything planned is answered unless the random records left a brainstorm pool empty.
    assert s["complete"] or s["waiting_for_brainstorm"], s
    assert set(plan.example_ids()) <= stored or s["waiting_for_brainstorm"]
