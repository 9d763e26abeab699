"""kernels/gpu_check.sh --dry-run: the one-shot GPU script runs every step on CPU.

The GPU window may be 15 minutes, machine start included, once: a typo, a missing file or
an import error in the script must show here, not there. The dry run runs the whole script
under TRITON_INTERPRET=1 at tiny sizes (about a minute on 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "kernels" / "gpu_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run_passes_within_six_minutes_of_step_limits(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    env = {k: v for k, v in os.environ.items() if not k.startswith("E5X_")}  # the script's defaults
    env.update(OUT=str(tmp_path), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "DRY RUN PASSED" in proc.stdout

    limits = json.loads((tmp_path / "limits.json").read_text())
    assert limits["total_s"] == sum(limits["steps_s"].values()) <= 360

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dry_run"] is True
    assert summary["rc"] == {"selfcheck": "0", "pytest": "0", "bench_kernels": "0", "bench_train": "0"}
    assert summary["selfcheck_ok"] is True
    # the environment the GPU run will record: GEMM path, attention backend, tunes, spills
    assert {"gemm_path", "attention_backend", "autotune_winners", "compiled_kernels"} <= set(summary["environment"])
    assert "train/e5x-train" in summary["goals"]  # the trainer's own GradCache step ran

    env_json = json.loads((tmp_path / "env.json").read_text())
    assert env_json["env"]["PYTHONUNBUFFERED"] == "1" and env_json["env"]["TRITON_INTERPRET"] == "1"
    assert env_json["packed_attention_auto"] == "sdpa_loop"
    train = json.loads((tmp_path / "bench_train.json").read_text())
    assert train["complete"] and {r["variant"] for r in train["results"]} >= {"plain", "e5x", "e5x-train"}
    progress = (tmp_path / "progress.txt").read_text()
    for step in ("environment", "self-check", "pytest", "bench_kernels", "bench_train", "summary"):
        assert f"{step} exit 0" in progress, progress


def test_gpu_check_rejects_unknown_arguments(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dryrun"],
        env={**os.environ, "OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "usage" in proc.stderr
