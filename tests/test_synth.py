"""e5x.synth against a real local HTTP server speaking the OpenAI chat API (offline).

Every fault the server can inject is survived, counted and reported, and no good answer
is lost; bad configs fail before any request; the plan is a pure function of the seed.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI

from e5x.synth import FatalAPIError, SynthConfig, build_plan, synthesize
from e5x.synth.plan import example_requests

KEY_ENV = "E5X_TEST_FAKE_KEY"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    s = FakeOpenAI()
    s.start()
    yield s
    s.stop()


def make_cfg(server: FakeOpenAI | None, **kw) -> SynthConfig:
    cfg = SynthConfig(
        n_examples=kw.pop("n_examples", 24),
        task_weights=kw.pop("task_weights", {"short_long": 2, "long_short": 1, "sts": 1, "bitext": 1}),
        tasks_per_brainstorm=5,
        examples_per_task=1.0,
        progress=False,
        concurrency=kw.pop("concurrency", 8),
        timeout_s=kw.pop("timeout_s", 2.0),
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        **kw,
    )
    cfg.endpoint.base_url = server.base_url if server else "http://127.0.0.1:9/v1"
    cfg.endpoint.api_key_env = KEY_ENV
    cfg.brainstorm.models = {"fake-big": 3, "fake-small": 1}
    cfg.examples.models = {"fake-big": 3, "fake-small": 1}
    cfg.prices = {"fake-big": (10.0, 30.0), "fake-small": (1.0, 2.0)}
    return cfg


def log_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "responses.jsonl").read_text().splitlines()]


def planned_ids(cfg: SynthConfig) -> set[str]:
    plan = build_plan(cfg)
    return {r.id for r in plan.brainstorm} | set(plan.example_ids())


def test_happy_path_stores_every_answer_once_with_its_metadata(server: FakeOpenAI, tmp_path: Path):
    cfg = make_cfg(server)
    run = tmp_path / "run"
    s = synthesize(cfg, run)
    assert s["complete"] and s["examples"] == {"planned": 24, "answered": 24, "by_type": s["examples"]["by_type"]}
    recs = log_records(run)
    ids = [r["id"] for r in recs]
    assert sorted(ids) == sorted(planned_ids(cfg)) and len(ids) == len(set(ids))
    assert server.ids_seen() == Counter({i: 1 for i in ids})  # nothing sent twice
    r = next(r for r in recs if r["step"] == "examples" and r["task_type"] == "short_long")
    assert r["messages"][-1]["role"] == "user" and r["meta"]["task"] in r["messages"][-1]["content"]
    assert r["params"]["temperature"] == 1.0 and r["params"]["response_format"] == {"type": "json_object"}
    assert r["model"] in ("fake-big", "fake-small") and r["finish_reason"] == "stop"
    assert r["usage"]["prompt_tokens"] > 0 and r["latency_s"] >= 0 and r["attempts"] == 1
    # Cost = usage x price table, summed.
    want = sum(
        (
            x["usage"]["prompt_tokens"] * cfg.price(x["model"])[0]
            + x["usage"]["completion_tokens"] * cfg.price(x["model"])[1]
        )
        / 1e6
        for x in recs
    )
    assert s["cost_usd"] == pytest.approx(want, rel=1e-6)
    # Brainstorm pools are deduplicated: the two tasks every answer shares appear once.
    pools = json.loads((run / "pools.json").read_text())
    pool = pools["pools"]["short_long"]
    assert len(pool) == len(set(pool)) and pools["stats"]["short_long"]["duplicates"] > 0
    assert sum("common short_long need" in t for t in pool) == 2
    # The sent prompts are exactly the planned ones.
    assert {b["messages"][0]["content"] for b in (a.body for a in server.arrivals)} == {
        x["messages"][-1]["content"] for x in recs
    }


def test_every_fault_is_survived_counted_and_reported(server: FakeOpenAI, tmp_path: Path):
    cfg = make_cfg(server, timeout_s=1.0)  # generous: only the "slow" fault may time out
    server.slow_s = 2.5
    server.retry_after = 0.3
    faults = {
        "examples-sts-000000": ["429"],
        "examples-sts-000001": ["500", "500"],
        "examples-sts-000002": ["slow"],
        "examples-sts-000003": ["drop"],
        "examples-bitext-000000": ["malformed"],
        "examples-bitext-000001": ["length"],
        "examples-bitext-000002": ["refusal"],
        "brainstorm-short_long-000000": ["500", "drop"],
    }
    for k, v in faults.items():
        server.faults[k] = list(v)
    run = tmp_path / "run"
    s = synthesize(cfg, run)
    assert s["complete"], s
    assert s["errors_this_session"] == {"rate_limited": 1, "http_500": 3, "timeout": 1, "connection": 2, "malformed": 1}
    assert s["finish_reasons"] == {"stop": len(planned_ids(cfg)) - 1, "length": 1} and s["refusals"] == 1
    assert s["failed_this_session"] == {}
    # No good answer lost: every planned request has exactly one stored answer.
    recs = log_records(run)
    assert sorted(r["id"] for r in recs) == sorted(planned_ids(cfg))
    by_id = {r["id"]: r for r in recs}
    assert by_id["examples-sts-000001"]["attempts"] == 3
    assert by_id["examples-bitext-000001"]["finish_reason"] == "length"
    assert by_id["examples-bitext-000002"]["refusal"] and by_id["examples-bitext-000002"]["content"] is None
    # Each failed attempt is in errors.jsonl with its kind.
    errs = [json.loads(line) for line in (run / "errors.jsonl").read_text().splitlines()]
    assert Counter(e["kind"] for e in errs) == Counter(s["errors_this_session"])
    # Retry-After was honoured: the retry came no sooner than the server asked.
    times = [a.t for a in server.arrivals if a.rid == "examples-sts-000000"]
    assert len(times) == 2 and times[1] - times[0] >= 0.3
    # The server answered each planned request exactly once (faults aside).
    assert set(server.answered.values()) == {1}


def test_retries_are_bounded_and_resume_finishes_without_resending(server: FakeOpenAI, tmp_path: Path):
    cfg = make_cfg(server, max_retries=2)
    server.faults["examples-sts-000004"] = ["500"] * 3
    run = tmp_path / "run"
    s = synthesize(cfg, run)
    assert not s["complete"] and s["failed_this_session"] == {"http_500": 1}
    assert s["examples"]["answered"] == 23 and server.ids_seen()["examples-sts-000004"] == 3
    answered_before = {r["id"] for r in log_records(run)}
    n_before = len(server.arrivals)
    s2 = synthesize(make_cfg(server, max_retries=2), run, resume=True)
    assert s2["complete"] and s2["answered_this_session"] == 1
    assert [a.rid for a in server.arrivals[n_before:]] == ["examples-sts-000004"]
    assert answered_before | {"examples-sts-000004"} == {r["id"] for r in log_records(run)}


def test_same_seed_same_plan_and_prompts():
    a, b = build_plan(make_cfg(None, seed=7)), build_plan(make_cfg(None, seed=7))
    c = build_plan(make_cfg(None, seed=8))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert [r.messages for r in a.brainstorm] == [r.messages for r in b.brainstorm]
    pool = ["Given a claim, find evidence.", "Given a title, find the abstract.", "Find recipes."]
    for name in a.skeleton:
        p = None if a.types[name].symmetric else pool
        ra, rb = example_requests(a, name, p), example_requests(b, name, p)
        assert [(r.id, r.model, r.messages) for r in ra] == [(r.id, r.model, r.messages) for r in rb]
        assert all("{" not in r.messages[-1]["content"].replace('{"', "") for r in ra)
        chunks = [x for k in range(0, len(ra), 4) for x in example_requests(a, name, p, k, 4)]
        assert [(r.id, r.messages, r.meta) for r in chunks] == [(r.id, r.messages, r.meta) for r in ra]
    bitext = example_requests(a, "bitext", None)
    assert all(r.meta["placeholders"]["src_lang"] != r.meta["placeholders"]["tgt_lang"] for r in bitext)


def test_language_and_model_mix_follow_the_weights():
    cfg = make_cfg(None, n_examples=6000, task_weights={"sts": 1})
    plan = build_plan(cfg)
    langs = Counter(plan.skeleton["sts"]["language"].to_list())
    assert langs["English"] / 6000 == pytest.approx(0.43, abs=0.025)
    assert langs["German"] / 6000 == pytest.approx(0.03, abs=0.01)
    assert len(langs) > 60  # the long tail is present
    models = Counter(plan.skeleton["sts"]["model"].to_list())
    assert models["fake-big"] / 6000 == pytest.approx(0.75, abs=0.025)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(task_weights={"short_long": 1, "nonsense": 1}), "unknown task type"),
        (dict(task_weights={"sts": 0, "bitext": 0}), "weights sum to 0"),
        (dict(task_weights={"sts": -1, "bitext": 2}), "must be a finite number >= 0"),
        (dict(language_weights={"English": float("nan")}), "language_weights"),
        (dict(max_cost_usd=1.0, prices={}), None),  # fine: fake models priced below
    ],
)
def test_bad_config_fails_before_any_request(server: FakeOpenAI, tmp_path: Path, change, message):
    cfg = make_cfg(server, **{k: v for k, v in change.items() if k != "prices"})
    if message is None:
        cfg.examples.models = {"unpriced-model": 1}
        message = "no price"
    with pytest.raises(ValueError, match=message):
        synthesize(cfg, tmp_path / "run")
    assert server.arrivals == [] and not (tmp_path / "run").exists()


def test_template_placeholder_without_values_fails_before_any_request(server: FakeOpenAI, tmp_path: Path):
    types = tmp_path / "types.toml"
    types.write_text(
        '[task_types.qa]\ntask = "Answer it."\nprompt = "{task} in {language} with {style}"\n'
        'fields = { q = "q", a = "a" }\nmapping = { query = "q", positive = "a" }\n'
        '[task_types.qa.placeholders]\nlanguage = "@languages"\n'
    )
    cfg = make_cfg(server, task_weights={"qa": 1}, task_types_file=str(types))
    with pytest.raises(ValueError, match=r"\{style\} which has no values"):
        synthesize(cfg, tmp_path / "run")
    assert server.arrivals == []


def test_missing_api_key_is_an_error_before_any_request(server: FakeOpenAI, tmp_path: Path, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(FatalAPIError, match=KEY_ENV):
        synthesize(make_cfg(server), tmp_path / "run")
    assert server.arrivals == []


def test_dry_run_sends_nothing_and_estimates_cost(server: FakeOpenAI, tmp_path: Path):
    out: list[str] = []
    d = synthesize(make_cfg(server), tmp_path / "run", dry_run=True, echo=out.append)
    assert server.arrivals == [] and not (tmp_path / "run").exists()
    assert d["total"]["requests"] == len(planned_ids(make_cfg(server)))
    assert d["total"]["cost_usd"] > 0 and d["total"]["prompt_tokens"] > 0
    assert "total" in out[0] and "brainstorm" in out[0]


def test_budget_cap_stops_and_resume_with_a_higher_cap_completes(server: FakeOpenAI, tmp_path: Path):
    run = tmp_path / "run"
    s = synthesize(make_cfg(server, max_requests=10), run)
    assert not s["complete"] and "max_requests=10" in s["stop_reason"]
    assert len(server.arrivals) == 10 == s["api_calls_total"]
    # A resume under the same cap sends nothing; a higher cap finishes the plan.
    s = synthesize(make_cfg(server, max_requests=10), run, resume=True)
    assert len(server.arrivals) == 10 and not s["complete"]
    s = synthesize(make_cfg(server, max_requests=100), run, resume=True)
    assert s["complete"] and max(server.ids_seen().values()) == 1


def test_cost_cap_is_never_exceeded(server: FakeOpenAI, tmp_path: Path):
    # In-flight requests reserve their worst case (prompt + max_tokens), so the cap holds
    # even with 8 requests in the air.
    cfg = make_cfg(server, max_cost_usd=0.05)
    cfg.brainstorm.max_tokens = cfg.examples.max_tokens = 200
    s = synthesize(cfg, tmp_path / "run")
    assert not s["complete"] and "max_cost_usd" in s["stop_reason"]
    assert 0.02 < s["cost_usd"] <= 0.05


def test_token_cap_is_never_exceeded(server: FakeOpenAI, tmp_path: Path):
    cfg = make_cfg(server, max_tokens_total=3000)
    cfg.brainstorm.max_tokens = cfg.examples.max_tokens = 150
    s = synthesize(cfg, tmp_path / "run")
    assert not s["complete"] and "max_tokens_total" in s["stop_reason"]
    assert 1000 < s["prompt_tokens"] + s["completion_tokens"] <= 3000


def test_rpm_limit_paces_requests(server: FakeOpenAI, tmp_path: Path):
    cfg = make_cfg(server, rpm=600, n_examples=25, task_weights={"sts": 1})  # 10/s, 1 s burst
    t0 = time.monotonic()
    assert synthesize(cfg, tmp_path / "run")["complete"]
    assert time.monotonic() - t0 >= 1.3


def test_json_schema_response_format_sends_the_task_schema(server: FakeOpenAI, tmp_path: Path):
    cfg = make_cfg(server, n_examples=6, task_weights={"long_short": 1})
    cfg.examples.response_format = cfg.brainstorm.response_format = "json_schema"
    assert synthesize(cfg, tmp_path / "run")["complete"]
    formats = {a.rid.split("-")[0]: a.body["response_format"] for a in server.arrivals}
    ex = formats["examples"]["json_schema"]
    assert formats["examples"]["type"] == "json_schema" and ex["name"] == "long_short"
    assert ex["schema"]["required"] == ["input_text", "label", "misleading_label"] and "$schema" not in ex["schema"]
    assert formats["brainstorm"]["json_schema"]["schema"]["properties"]["tasks"]["type"] == "array"


def test_azure_endpoint_uses_deployment_urls(server: FakeOpenAI, tmp_path: Path):
    cfg = make_cfg(server, n_examples=4, task_weights={"sts": 1})
    cfg.endpoint.provider = "azure"
    cfg.endpoint.base_url = None
    cfg.endpoint.azure_endpoint = server.base_url.removesuffix("/v1")
    cfg.endpoint.api_version = "2024-06-01"
    assert synthesize(cfg, tmp_path / "run")["complete"]
    assert len(server.arrivals) == 4


def test_torn_last_line_is_repaired_on_resume(server: FakeOpenAI, tmp_path: Path, monkeypatch):
    import e5x.synth

    monkeypatch.setattr(e5x.synth, "RENDER_CHUNK", 3)  # also exercise chunked rendering
    run = tmp_path / "run"
    synthesize(make_cfg(server, max_requests=8), run)
    log = run / "responses.jsonl"
    good = log.read_bytes()
    log.write_bytes(good + b'{"id": "examples-sts-0000')  # a kill -9 in the middle of a write
    s = synthesize(make_cfg(server), run, resume=True)
    assert s["complete"]
    assert log.read_bytes().startswith(good)
    ids = [r["id"] for r in log_records(run)]
    assert len(ids) == len(set(ids)) == len(planned_ids(make_cfg(server)))


def test_run_directory_guards(server: FakeOpenAI, tmp_path: Path):
    run = tmp_path / "run"
    synthesize(make_cfg(server, n_examples=4, task_weights={"sts": 1}), run)
    with pytest.raises(FileExistsError, match="--resume"):
        synthesize(make_cfg(server, n_examples=4, task_weights={"sts": 1}), run)
    with pytest.raises(ValueError, match="no longer produces the stored plan"):
        synthesize(make_cfg(server, n_examples=5, task_weights={"sts": 1}), run, resume=True)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        synthesize(make_cfg(server), tmp_path / "other", resume=True)
    # Resuming with no config reads the run's own config.json.
    assert synthesize(None, run, resume=True)["complete"]


def test_cli_dry_run_and_bad_config(server: FakeOpenAI, tmp_path: Path, capsys):
    from e5x.cli import main

    base = ["synth", "--out", str(tmp_path / "run"), "--base-url", server.base_url, "--api-key-env", KEY_ENV]
    assert main([*base, "--dry-run", "-n", "10", "--model", "gpt-4o=3", "--model", "gpt-4o-mini"]) == 0
    err = capsys.readouterr().err
    assert "total" in err and "gpt-4o" in err
    assert main([*base, "-n", "10", "--task-weight", "bogus=1"]) == 2
    assert "unknown task type" in capsys.readouterr().err
    assert server.arrivals == []
    assert main([*base, "-n", "6", "--task-weight", "sts=1", "--no-progress", "--model", "m", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["complete"] is True


def test_config_from_toml_with_nested_tables_and_clear_errors(tmp_path: Path):
    f = tmp_path / "synth.toml"
    f.write_text(
        "n_examples = 12\nseed = 3\nconcurrency = 4\nmax_cost_usd = 5.0\n"
        "[task_weights]\nsts = 1\nshort_long = 2\n"
        '[endpoint]\nbase_url = "http://127.0.0.1:1/v1"\napi_key_env = "MY_KEY"\n'
        '[examples]\nmodels = { "gpt-4o" = 0.75, "gpt-4o-mini" = 0.25 }\nresponse_format = "json_schema"\n'
        '[prices]\n"gpt-4o" = [2.5, 10.0]\n'
    )
    cfg = SynthConfig.from_toml(f)
    assert cfg.n_examples == 12 and cfg.endpoint.api_key_env == "MY_KEY"
    assert (
        cfg.examples.models == {"gpt-4o": 0.75, "gpt-4o-mini": 0.25} and cfg.examples.response_format == "json_schema"
    )
    assert cfg.brainstorm.max_tokens == 1024  # untouched defaults stay
    assert build_plan(cfg).counts == {"sts": 4, "short_long": 8}
    # Round trip through the run directory's config.json.
    assert SynthConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).to_dict() == cfg.to_dict()
    # Custom task types in the same file are picked up.
    f.write_text(
        "n_examples = 4\n[task_weights]\nqa = 1\n"
        '[task_types.qa]\ntask = "Answer it."\nprompt = "{task}"\n'
        'fields = { q = "q", a = "a" }\nmapping = { query = "q", positive = "a" }\n'
    )
    assert build_plan(SynthConfig.from_toml(f)).counts == {"qa": 4}
    f.write_text("n_exmaples = 3\n")
    with pytest.raises(ValueError, match=r"synth.toml: n_exmaples: unknown key; did you mean 'n_examples'\?"):
        SynthConfig.from_toml(f)
    f.write_text("[endpoint]\nbase_ur = 'x'\n")
    with pytest.raises(ValueError, match=r"endpoint.base_ur: unknown key; did you mean 'base_url'\?"):
        SynthConfig.from_toml(f)


def test_bad_key_stops_the_run_without_retrying(server: FakeOpenAI, tmp_path: Path):
    server.fault_fn = lambda rid, nth: "401"
    with pytest.raises(FatalAPIError, match="auth"):
        synthesize(make_cfg(server), tmp_path / "run")
    assert len(server.arrivals) <= 8  # at most the requests already in flight
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["fatal"].startswith("auth") and not summary["complete"]


def test_token_bucket_paces_and_lets_oversized_requests_through():
    import asyncio

    from e5x.synth.runner import TokenBucket

    async def scenario() -> list[float]:
        b = TokenBucket(per_minute=6000)  # 100 tokens/s, 1 s of burst
        t0 = time.monotonic()
        marks = []
        await b.acquire(100)  # the burst: immediate
        marks.append(time.monotonic() - t0)
        await b.acquire(50)  # must wait ~0.5 s for refill
        marks.append(time.monotonic() - t0)
        await b.acquire(150)  # larger than the bucket: passes once it is full, leaves debt
        marks.append(time.monotonic() - t0)
        await b.acquire(1)  # pays the debt first (~0.5 s)
        marks.append(time.monotonic() - t0)
        return marks

    m = asyncio.run(scenario())
    assert m[0] < 0.05
    assert 0.4 < m[1] < 0.9
    assert 0.4 < m[2] - m[1] < 1.3
    assert 0.4 < m[3] - m[2] < 1.0


def test_retry_after_parsing():
    from email.utils import formatdate

    from e5x.synth.runner import retry_after_seconds

    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert 8 <= retry_after_seconds({"retry-after": formatdate(time.time() + 10, usegmt=True)}) <= 10
    assert retry_after_seconds({"retry-after": "soon"}) is None and retry_after_seconds({}) is None
