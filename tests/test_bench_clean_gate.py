"""The clean benchmark's quality-gate rows, on a few thousand rows (the numbers themselves
come from full runs; here: that the rows are there and what they compare is what they say)."""

from __future__ import annotations

import re

import pytest

from e5x.bench import clean


def test_gate_rows_give_each_row_a_task_of_its_own() -> None:
    tasks = clean.gate_tasks(5_000)
    # Synthetic rows answer a task each: the bench must not let the echo check reuse one.
    changed = int((tasks != tasks.shift(1)).sum())
    assert changed > 0.99 * tasks.len()
    assert tasks.n_unique() > 2_500  # of a pool of 4,096


def test_gate_rows_run_side_by_side(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--rows", "3000", "--only-gate", "--unlisted-rows", "600", "--repeat", "2"]
    assert clean.main(argv) == 0
    out = capsys.readouterr().out
    costs = re.findall(r"quality gate \(([^)]*)\): [\d.]+ GB/s vs [\d.]+ GB/s off = -?\d+% .*\+?-?\d+% CPU", out)
    assert costs == ["all checks but wrong_language", "all checks", f"all checks, {clean.UNLISTED_LANGUAGE} rows"]
    table = {m[0].strip(): m[1] for m in re.findall(r"\| e5x +\| ([^|]+)\|.*\| ([^|]*kept[^|]*)$", out, re.M)}
    assert set(table) == {
        "fused, gate off",
        "fused, gate w/o lang",
        "fused, gate all",
        "gate off, Uzbek",
        "gate all, Uzbek",
    }
    kept = {stage: int(re.findall(r"([\d,]+) kept", note)[0].replace(",", "")) for stage, note in table.items()}
    # The gate only ever removes rows.
    assert kept["fused, gate all"] <= kept["fused, gate w/o lang"] <= kept["fused, gate off"]
    assert kept["gate all, Uzbek"] <= kept["gate off, Uzbek"]
