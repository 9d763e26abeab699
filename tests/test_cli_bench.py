"""``e5x bench``: the benchmarks shipped in the package, finding benches/, listing, argument
pass-through and exit codes.

Runs tiny fake benchmark scripts from a temporary folder, and the shipped kernels benchmark
at a tiny CPU size from outside the source tree; the other real benchmarks are only listed
(``--list`` reads their docstrings without importing them), never run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from e5x.cli import bench, main

REPO = Path(__file__).resolve().parent.parent

ECHO = '''\
"""Echo the arguments as JSON.

Second paragraph that --list must not show.
"""
import argparse, json, sys
if sys.argv[1:] == ["--help"]:
    argparse.ArgumentParser(prog="bench_echo", description="the echo benchmark's own help").parse_args()
print(json.dumps(sys.argv[1:]))
'''
FAIL = '''\
"""Exit with code 3 after printing."""
import sys
print("failing on purpose")
sys.exit(3)
'''
QUALITY = '''\
"""Quality: a benchmark without the bench_ prefix."""
print("quality ran")
'''
BROKEN = "def f(:\n"


@pytest.fixture
def benches(tmp_path: Path) -> Path:
    d = tmp_path / "benches"
    d.mkdir()
    (d / "bench_echo.py").write_text(ECHO)
    (d / "bench_fail.py").write_text(FAIL)
    (d / "quality.py").write_text(QUALITY)
    (d / "bench_broken.py").write_text(BROKEN)
    (d / "_helper.py").write_text('"""Not a benchmark."""\n')
    (d / "notes.txt").write_text("not python")
    return d


def test_args_pass_through_unchanged(benches: Path, capfd: pytest.CaptureFixture[str]) -> None:
    passed = ["--rows", "5", "a b", "--list", "--benches-dir", "x", "-q"]
    assert main(["bench", "--benches-dir", str(benches), "echo", *passed]) == 0
    assert json.loads(capfd.readouterr().out.strip().splitlines()[-1]) == passed


def test_help_after_name_is_the_benchmarks_own(benches: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--benches-dir", str(benches), "echo", "--help"]) == 0
    out = capfd.readouterr().out
    assert "usage: bench_echo" in out and "the echo benchmark's own help" in out
    assert "--benches-dir" not in out  # not e5x bench's help


def test_exit_code_propagates(benches: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--benches-dir", str(benches), "fail"]) == 3
    assert "failing on purpose" in capfd.readouterr().out


def test_exit_code_of_the_console_command(benches: Path) -> None:
    # The whole path a user takes: the process's own exit status, not just run()'s value.
    code = "import sys; from e5x.cli import main; sys.exit(main())"
    proc = subprocess.run(
        [sys.executable, "-c", code, "bench", "--benches-dir", str(benches), "fail"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3, proc.stderr
    assert "failing on purpose" in proc.stdout


def test_name_without_bench_prefix(benches: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--benches-dir", str(benches), "quality"]) == 0
    assert "quality ran" in capfd.readouterr().out


@pytest.mark.parametrize("argv", [["--list"], []])
def test_list_shows_first_docstring_line(benches: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--benches-dir", str(benches), *argv]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert sorted(rows) == sorted(["broken", "echo", "fail", "quality", *bench.packaged()])
    assert "kernels" in rows  # shipped in the package, listed beside the folder's
    assert rows["echo"].endswith("Echo the arguments as JSON.")
    assert "Second paragraph" not in out
    assert rows["quality"].endswith("Quality: a benchmark without the bench_ prefix.")
    assert "unreadable" in rows["broken"]  # a syntax error is reported, not raised
    assert "helper" not in out and "notes" not in out


def test_list_does_not_import_the_scripts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bench_boom.py").write_text('"""Boom."""\nraise SystemExit("imported!")\n')
    assert main(["bench", "--benches-dir", str(tmp_path), "--list"]) == 0
    assert "Boom." in capsys.readouterr().out


def test_unknown_name_lists_available(benches: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--benches-dir", str(benches), "nope", "--x"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'nope'" in err
    assert all(name in err for name in ["broken", "echo", "fail", "quality", "kernels"]), err


def test_missing_explicit_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    assert main(["bench", "--benches-dir", str(missing), "echo"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "clone" in err


def test_env_var_folder(
    benches: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("E5X_BENCHES_DIR", str(benches))
    assert main(["bench", "echo", "1"]) == 0
    assert json.loads(capfd.readouterr().out.strip()) == ["1"]
    # An explicit setting that is wrong is an error, not a silent fallback elsewhere.
    monkeypatch.setenv("E5X_BENCHES_DIR", str(tmp_path / "typo"))
    assert main(["bench", "--list"]) == 2
    assert "E5X_BENCHES_DIR" in capfd.readouterr().err


def test_cwd_benches_folder(benches: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("E5X_BENCHES_DIR", raising=False)
    monkeypatch.chdir(benches.parent)
    assert main(["bench", "--list"]) == 0
    assert str(benches) in capsys.readouterr().out.splitlines()[0]


def test_without_a_checkout_the_shipped_benchmarks_remain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("E5X_BENCHES_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    # As from an installed wheel: no checkout above the package.
    monkeypatch.setattr(bench, "_checkout_benches", lambda: None)
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("benchmarks in the e5x package (")
    assert {line.split()[0] for line in out.splitlines()[1:-1]} == set(bench.packaged())
    assert "clone" in out.splitlines()[-1]
    assert main(["bench", "synth"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown benchmark 'synth'" in err
    assert str(tmp_path / "benches") in err  # says where it looked
    assert "not shipped in the package" in err and "clone" in err


def test_real_repository_benches_from_repo_root(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("E5X_BENCHES_DIR", raising=False)
    monkeypatch.chdir(REPO)
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert str(REPO / "benches") in out.splitlines()[0]
    rows = {line.split()[0]: line.split(None, 1)[1:] for line in out.splitlines()[1:]}
    for name in ["clean", "synth", "kernels", "train", "quality"]:
        assert rows.get(name), f"{name} missing or without a docstring line in:\n{out}"
    # The listed line is the docstring's first line, of the shipped module where there is one.
    for name, path in [("kernels", bench.packaged()["kernels"]), ("synth", REPO / "benches" / "bench_synth.py")]:
        assert rows[name][0] == path.read_text().split('"""')[1].splitlines()[0]


def test_subcommand_is_registered() -> None:
    from e5x.cli import _available

    assert "bench" in _available()
    assert (bench.__doc__ or "").startswith("``e5x bench")


def test_shipped_kernels_benchmark_runs_outside_the_source_tree(tmp_path: Path) -> None:
    # What a user of the wheel runs: no benches/ in reach, the code comes from the package.
    env = {k: v for k, v in os.environ.items() if k != "E5X_BENCHES_DIR"}
    argv = ["bench", "kernels", "--device", "cpu", "--sizes", "16", "--hidden", "64", "--budget", "0.05",
            "--max-reps", "3", "--methods", "e5x,eager-fp32"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "e5x", *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    header = dict(line[2:].split(": ", 1) for line in out.splitlines() if line.startswith("# ") and ": " in line)
    assert header["device"].startswith("CPU") and header["e5x"] and header["torch"] and header["python"], header
    rows = [line for line in out.splitlines() if line.startswith("|") and "---" not in line]
    assert rows[0].split("|")[1].strip() == "Bq"  # the table's header line
    methods = {row.split("|")[2].strip(): row for row in rows[1:]}
    assert set(methods) == {"e5x", "eager-fp32"}, out
    for row in methods.values():
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[0] == "16" and float(cells[3]) > 0, row  # Bq, median ms
    assert "torch reference (CPU)" in methods["e5x"]
    assert not (tmp_path / "benches").exists()
