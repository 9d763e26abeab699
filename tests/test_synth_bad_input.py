"""Bad input to ``e5x synth``: the documented exit code, one line on stderr, no traceback,
no request sent, and existing outputs left as they were."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI

from e5x.cli import main
from e5x.synth import SynthConfig, synthesize

KEY_ENV = "E5X_TEST_FAKE_KEY"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    s = FakeOpenAI()
    s.start()
    yield s
    s.stop()


def cli(server: FakeOpenAI, out: Path, *args: str) -> list[str]:
    return [
        "synth", "--out", str(out), "--base-url", server.base_url, "--api-key-env", KEY_ENV,
        "--no-progress", "-n", "4", "--task-weight", "sts=1", "--model", "m", *args,
    ]  # fmt: skip


def cli_with_config(server: FakeOpenAI, out: Path, config: Path, body: str) -> list[str]:
    """A small run of ``config``: flags and overrides win over the file, so only those for
    fields ``body`` leaves alone are given."""
    argv = ["synth", "--out", str(out), "--config", str(config)]
    if "endpoint" not in body:
        argv += ["--base-url", server.base_url, "--api-key-env", KEY_ENV]
    for field, flags in (("n_examples", ["-n", "4"]), ("progress", ["--no-progress"]),
                         ("task_weights", ["--task-weight", "sts=1"]), ("models", ["--model", "m"])):  # fmt: skip
        argv += flags if field not in body else []
    return argv


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = int(e.code or 0)
    err = capsys.readouterr().err.strip()
    return code, err


def one_line(err: str) -> bool:
    return "Traceback" not in err and len(err.splitlines()) == 1


FLAG_CASES = [
    (["--task-weight", "sts=abc"], "bad --task-weight 'sts=abc'"),
    (["--model", "gpt=x"], "bad --model 'gpt=x'"),
    (["--model", "=2"], "no model name"),
    (["--model", "m=-1"], "must be a finite number >= 0"),
    (["--price", "m=1"], "bad --price 'm=1'"),
    (["--price", "m=1,nan"], "prices.m[1]: must be a finite number"),
    (["--max-requests", "-1"], "max_requests: must be >= 0, got -1"),
    (["--max-tokens-total", "-5"], "max_tokens_total: must be >= 0"),
    (["--max-cost", "-1"], "max_cost_usd: must be >= 0"),
    (["--concurrency", "0"], "concurrency: must be >= 1"),
    (["--tasks-per-brainstorm", "0"], "tasks_per_brainstorm: must be >= 1"),
    (["-n", "-5"], "n_examples: must be >= 0, got -5"),
    (["-n", "1000000000000"], "n_examples: must be <= 10_000_000"),
    (["--temperature", "nan"], "temperature: must be a finite number"),
    (["--top-p", "2"], "top_p: must be <= 1"),
    (["--timeout", "0"], "timeout_s: must be > 0"),
    (["--brainstorm-retries", "-1"], "brainstorm_retries: must be >= 0, got -1"),
    (["--retry-after-max", "inf"], "retry_after_max_s: must be a finite number"),
    (["--task-weight", "bogus=1"], "unknown task type"),
    (["--config", "/nonexistent/synth.toml"], "/nonexistent/synth.toml"),
    (["--task-types", "/nonexistent/types.toml"], "/nonexistent/types.toml"),
    # key=value words: the same fields, the same checks, named as overrides.
    (["concurrency=0"], "override: concurrency: must be >= 1, got 0"),
    (["task_weights=short_long"], "override: task_weights: must be a table of name = a number, got 'short_long'"),
    (["concurency=4"], "override: concurency: unknown key; did you mean 'concurrency'?"),
    (["examples.temprature=1"], "override: examples.temprature: unknown key; did you mean 'temperature'?"),
    (["max_requests=ten"], "override: max_requests: must be an integer >= 0 or unset, got 'ten'"),
]


@pytest.mark.parametrize("args, message", FLAG_CASES, ids=[" ".join(a) for a, _ in FLAG_CASES])
def test_bad_flags_exit_2_with_one_line(server: FakeOpenAI, tmp_path: Path, capsys, args, message):
    code, err = run_cli(cli(server, tmp_path / "run", *args), capsys)
    assert code == 2 and one_line(err) and message in err, err
    assert server.arrivals == [] and not (tmp_path / "run").exists()


TOML_CASES = [
    ('task_weights = "short_long"', "task_weights: must be a table of name = a number, got 'short_long' (str)"),
    ("task_weights = [1, 2]", "task_weights: must be a table"),
    ('n_examples = "ten"', "n_examples: must be an integer >= 0 and <= 10_000_000, got 'ten'"),
    ("n_examples = 2.5", "n_examples: must be an integer >= 0 and <= 10_000_000, got 2.5"),
    ("concurrency = true", "concurrency: must be an integer >= 1, got True (bool)"),
    ("max_requests = -3", "max_requests: must be >= 0, got -3"),
    ("max_cost_usd = -0.5", "max_cost_usd: must be >= 0"),
    ('language_weights = "en"', "language_weights: must be a table of name = a number or unset"),
    ('brainstorm_requests = { long_short = "2" }', "brainstorm_requests.long_short: must be an integer"),
    ("prices = { m = [1] }", "prices.m: must be a list of 2 numbers"),
    ('endpoint = "http://x"', "endpoint: must be a table, got 'http://x'"),
    ('[examples]\ntemperature = "hot"', "examples.temperature: must be a number >= 0 or unset, got 'hot'"),
    ('[examples]\nresponse_format = "yaml"', "examples.response_format: must be one of none|json_object|json_schema"),
    ('[examples]\nmodels = "gpt-4o"', "examples.models: must be a table of name = a number"),
    ("[endpoint]\nheaders = { x = 1 }", "endpoint.headers.x: must be a string"),
    ("progress = 1", "progress: must be true or false, got 1"),
    ('fsync = "sometimes"', "fsync: must be one of always|interval|never"),
    ("n_exmaples = 3", "n_exmaples: unknown key; did you mean 'n_examples'?"),
    ("this is = not toml", "invalid TOML"),
]


@pytest.mark.parametrize("body, message", TOML_CASES, ids=[b.split("\n")[-1] for b, _ in TOML_CASES])
def test_wrong_typed_config_fails_before_any_request(server: FakeOpenAI, tmp_path: Path, capsys, body, message):
    f = tmp_path / "synth.toml"
    f.write_text(body + "\n")
    code, err = run_cli(cli_with_config(server, tmp_path / "run", f, body), capsys)
    assert code == 2 and one_line(err), err
    assert message in err and str(f) in err, err
    assert server.arrivals == [] and not (tmp_path / "run").exists()


def test_wrong_types_from_python_fail_before_any_request(server: FakeOpenAI, tmp_path: Path):
    for kw, message in (
        (dict(task_weights="short_long"), "task_weights: must be a table"),
        (dict(max_requests="10"), "max_requests: must be an integer >= 0 or unset"),
        (dict(concurrency=4.0), "concurrency: must be an integer"),
        (dict(n_examples=100, examples_per_task=1e-9), "plans more than 10_000_000 brainstorm requests"),
    ):
        cfg = SynthConfig(**kw)
        cfg.endpoint.api_key_env = KEY_ENV
        with pytest.raises(ValueError, match=message):
            synthesize(cfg, tmp_path / "run")
    assert server.arrivals == [] and not (tmp_path / "run").exists()


def test_unusable_output_paths_are_one_line_errors(server: FakeOpenAI, tmp_path: Path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [(a_file, "cannot use"), (a_file / "run", "cannot use")]
    # --local-llm makes the run directory first (for the server's log): the same error.
    code, err = run_cli(["synth", "--out", str(a_file / "run"), "--local-llm", str(a_file), "-n", "2"], capsys)
    assert code == 2 and one_line(err) and "Not a directory" in err, err
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        cases += [(ro / "run", "Permission denied"), (ro, "Permission denied")]
    for out, message in cases:
        code, err = run_cli(cli(server, out), capsys)
        assert code == 2 and one_line(err) and message in err and str(out) in err, (out, err)
    # A run-directory file replaced by a directory.
    run = tmp_path / "run"
    assert run_cli(cli(server, run), capsys)[0] == 0
    (run / "calls.jsonl").unlink()
    (run / "calls.jsonl").mkdir()
    code, err = run_cli(cli(server, run, "--resume"), capsys)
    assert code == 2 and one_line(err) and "calls.jsonl is not a regular file" in err
    assert len(server.arrivals) == 4
    assert a_file.read_text() == "x"


@pytest.mark.parametrize("name", ["plan.json", "config.json"])
@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"concurrency": "8"}'])
def test_corrupt_run_files_are_named_and_left_alone(server: FakeOpenAI, tmp_path: Path, capsys, name, content):
    run = tmp_path / "run"
    assert run_cli(cli(server, run, "--max-requests", "2"), capsys)[0] == 3
    (run / name).write_text(content)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    n = len(server.arrivals)
    # config.json is only read when no config is given: resume with --out alone.
    argv = ["synth", "--out", str(run), "--resume", "--no-progress"]
    code, err = run_cli(argv, capsys)
    if name == "plan.json" and content.startswith('{"'):
        assert code == 2 and "no longer produces the stored plan" in err  # a valid object, wrong plan
    else:
        assert code == 2 and one_line(err) and name in err, err
    assert len(server.arrivals) == n
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }


def test_exit_codes_through_the_installed_command(server: FakeOpenAI, tmp_path: Path):
    env = dict(os.environ, **{KEY_ENV: "sk-test"})
    base = [sys.executable, "-m", "e5x", *cli(server, tmp_path / "run")]
    for extra, code in (
        (["--price", "m=oops"], 2),
        (["--max-requests", "-1"], 2),
        (["--max-requests", "1"], 3),  # incomplete: the cap stopped it
        (["--max-requests", "1"], 2),  # the run directory exists and --resume is missing
        (["--resume", "--max-requests", "10"], 0),
    ):
        r = subprocess.run(base + extra, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == code, (extra, r.stderr)
        assert "Traceback" not in r.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["api_calls_total"] == 4


@pytest.mark.parametrize(
    "target, exc",
    [
        ("mkdir", PermissionError(13, "Permission denied")),
        ("lock", PermissionError(13, "Permission denied")),
        ("first_write", OSError(28, "No space left on device")),
        ("mkdir", OSError(30, "Read-only file system")),
    ],
)
def test_os_errors_on_the_run_directory_are_one_line(
    server: FakeOpenAI, tmp_path: Path, capsys, monkeypatch, target, exc
):
    """The same paths as a read-only or full disk, also where the tests run as root."""
    import e5x.synth as synth

    def boom(*a, **k):
        raise exc

    if target == "mkdir":
        monkeypatch.setattr(Path, "mkdir", boom)
    elif target == "lock":
        monkeypatch.setattr(synth, "RunLock", boom)
    else:
        monkeypatch.setattr(synth, "write_json_atomic", boom)
    code, err = run_cli(cli(server, tmp_path / "run"), capsys)
    assert code == 2 and one_line(err) and exc.strerror in err and str(tmp_path / "run") in err, err
    assert server.arrivals == []
