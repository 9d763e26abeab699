"""The optional extras: `pip install e5x` is the data core; a command whose extra is missing
says in one line which `pip install 'e5x[...]'` brings it, with exit 1, and the core
commands run without any extra. The commands run in subprocesses in which the extras'
modules cannot be imported (a meta-path finder refuses them, as if never installed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from e5x._extras import EXTRAS, MissingExtra, missing_module_message, require
from e5x.cli import EXIT_FAILED

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
# Every module an extra brings (triton too: torch's own dependency on Linux).
BLOCKED = sorted({m for modules in EXTRAS.values() for m in modules} | {"triton", "aiohttp"})
BLOCKER = f"""
import sys
BLOCKED = set({BLOCKED!r})

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from e5x.cli import main
sys.exit(main(sys.argv[1:]))
"""


def e5x_without_extras(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKER, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip


@pytest.fixture
def inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("E5X_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("E5X_DEBUG", raising=False)
    pl.DataFrame({"query": [f"q{i}" for i in range(8)], "positive": [f"p{i}" for i in range(8)]}).write_parquet(
        tmp_path / "pairs.parquet")  # fmt: skip
    (tmp_path / "cfg.toml").write_text(
        'batch_size = 4\n[tiny_model]\narch = "mistral"\n[[sources]]\npath = "pairs.parquet"\n'
    )
    run = tmp_path / "run"
    run.mkdir()
    answer = {"S1": "A cat sits on the mat.", "S2": "A cat is sitting on a mat.", "S3": "Stocks fell sharply today."}
    record = {"id": "examples-sts-000000", "step": "examples", "task_type": "sts", "model": "m",
              "content": json.dumps(answer), "refusal": None, "finish_reason": "stop",
              "meta": {"task": "Retrieve semantically similar text.", "language": "English"}}  # fmt: skip
    (run / "responses.jsonl").write_text(json.dumps(record) + "\n")
    (tmp_path / "sts.csv").write_text("a,b,1.0\n")
    return tmp_path


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "cfg.toml"], "e5x train: error: training needs torch, transformers, peft (not installed): "
                            "pip install 'e5x[train]'"),
    (["eval", "model-dir", "sts.csv"], "pip install 'e5x[eval]'"),
    (["encode", "model-dir", "texts.txt", "-o", "e.npy"], "e5x encode: error: loading a model needs torch, transformers, peft "
                                           "(not installed): pip install 'e5x[train]'"),
    (["synth", "--out", "synth-run"], "e5x synth: error: synthesis needs openai (not installed): "
                                      "pip install 'e5x[synth]'"),
    (["bench", "kernels", "--help"], "e5x bench: error: torch is not installed: pip install 'e5x[train]'"),
], ids=["train", "eval", "encode", "synth", "bench-kernels"])  # fmt: skip
def test_a_missing_extra_is_one_line_naming_the_pip_command(inputs: Path, argv: list[str], message: str) -> None:
    if argv[0] == "encode":
        (inputs / "model-dir").mkdir()
        (inputs / "texts.txt").write_text("a text\n")
    proc = e5x_without_extras(*argv, cwd=inputs)
    assert proc.returncode == EXIT_FAILED, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr.strip(), proc.stderr


def test_help_and_the_core_commands_run_without_extras(inputs: Path) -> None:
    help_proc = e5x_without_extras("train", "--help", cwd=inputs)
    assert help_proc.returncode == 0, help_proc.stderr
    assert "usage: e5x train" in help_proc.stdout and "e5x[train]" in help_proc.stdout
    # The config and its data are checked without a model (nor torch).
    check = e5x_without_extras("train", "cfg.toml", "--check", cwd=inputs)
    assert check.returncode == 0, check.stderr
    assert "cfg.toml: OK" in check.stdout
    clean = e5x_without_extras("clean", "run", "--out", "t.parquet", "--json", "--quality-checks", "none", cwd=inputs)
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["kept"] == 1 and (inputs / "t.parquet").is_file()
    listing = e5x_without_extras("data", "list", cwd=inputs)
    assert listing.returncode == 0, listing.stderr
    assert "scifact" in listing.stdout
    dry = e5x_without_extras("synth", "--dry-run", "--out", "synth-run", cwd=inputs)
    assert dry.returncode == 0, dry.stderr


def test_require_names_only_the_missing_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    require("anything", "train")  # installed in the test environment: no error
    monkeypatch.setitem(EXTRAS, "train", ("torch", "e5x_no_such_module"))
    with pytest.raises(MissingExtra, match=r"^training needs e5x_no_such_module \(not installed\): "
                                           r"pip install 'e5x\[train\]'$") as info:  # fmt: skip
        require("training", "train")
    assert info.value.name == "e5x_no_such_module"


def test_missing_module_message_prefers_the_commands_extra() -> None:
    torch_missing = ModuleNotFoundError("No module named 'torch'", name="torch.nn")
    assert missing_module_message(torch_missing) == "torch is not installed: pip install 'e5x[train]'"
    assert missing_module_message(torch_missing, prefer="eval") == "torch is not installed: pip install 'e5x[eval]'"
    assert missing_module_message(ModuleNotFoundError("x", name="no_extra_brings_me")) is None


def test_the_table_matches_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(EXTRAS) <= set(extras), f"extras in e5x._extras but not in pyproject: {set(EXTRAS) - set(extras)}"
    core = " ".join(project["dependencies"]).lower()
    for heavy in ["torch", "triton", "transformers", "peft", "openai", "scipy", "gguf", "sentence-transformers"]:
        assert heavy not in core, f"{heavy} is a core dependency again"
    assert extras["all"] == ["e5x[synth,train,eval]"]
