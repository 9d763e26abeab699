"""e5x.formats: the response log and the training triples each have one module, which
synth, clean and the data stage all go through."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from test_architecture import imports
from test_clean_stage import NO_GATE, sample_records, write_run

import e5x.data
from e5x.cleaning import CleanConfig, clean
from e5x.formats import triples
from e5x.formats.response_log import EXAMPLE_COLUMNS, AppendLog, read_examples, read_log, response_record


def record(i: int, step: str = "examples", content: object = "answer", **meta: object) -> dict:
    rec = response_record(
        id=f"{step}-sts-{i:06d}",
        step=step,
        task_type="sts",
        model="m",
        response_model="m-2024",
        messages=[{"role": "user", "content": "prompt"}],
        params={"temperature": 1.0},
        meta={"task": f"task {i}", "language": "English", "placeholders": {"num_words": 50, **meta}},
        content=None,
        refusal=None,
        finish_reason="stop",
        rejected=None,
        prompt_tokens=10,
        completion_tokens=5,
        usage_estimated=False,
        latency_s=0.123456,
        attempts=1,
        call="s-1",
        response_id=f"r{i}",
        ts=1.5,
        extra={"usage_raw": "odd"},
        cost_usd=0.25,
    )
    rec["content"] = content
    return rec


def test_response_record_keys_in_written_order() -> None:
    rec = record(0)
    assert list(rec) == [
        "id", "step", "task_type", "model", "response_model", "messages", "params", "meta", "content",
        "refusal", "finish_reason", "rejected", "usage", "usage_estimated", "latency_s", "attempts", "call",
        "response_id", "ts", "usage_raw", "cost_usd",
    ]  # fmt: skip
    assert rec["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    assert rec["latency_s"] == 0.1235


def test_appended_records_read_back_the_same_either_way(tmp_path: Path) -> None:
    examples = [record(i) for i in range(3)]
    log = AppendLog(tmp_path / "a.jsonl", fsync="never")
    for r in examples:
        log.append(r)
    log.close()
    assert read_log(tmp_path / "a.jsonl") == (examples, 0)
    # A brainstorm answer with list content sends the whole log down read_log's path.
    b = tmp_path / "b.jsonl"
    b.write_bytes(
        (tmp_path / "a.jsonl").read_bytes() + (json.dumps(record(9, "brainstorm", [{"text": "x"}])) + "\n").encode()
    )
    fast, torn_a = read_examples(tmp_path / "a.jsonl", ["num_words"])
    slow, torn_b = read_examples(b, ["num_words"])
    assert fast.columns == [*EXAMPLE_COLUMNS, "num_words"] and (torn_a, torn_b) == (0, 0)
    assert fast.equals(slow) and fast["num_words"].to_list() == ["50", "50", "50"]
    assert fast["instruction"].to_list() == ["task 0", "task 1", "task 2"]


def test_one_triples_format_for_every_stage() -> None:
    assert e5x.data.COLUMNS is triples.COLUMNS and e5x.data.write_triples is triples.write_triples
    assert e5x.data.DataError is triples.DataError
    assert e5x.data.triples.COLUMNS is triples.COLUMNS  # the data module re-exports the format


def test_clean_keeps_the_previous_triples_when_a_write_fails(tmp_path: Path, monkeypatch) -> None:
    run = write_run(tmp_path / "run", sample_records())
    out = tmp_path / "t.parquet"
    clean(CleanConfig(inputs=[str(run)], out=str(out), chart="", **NO_GATE))
    before = out.read_bytes()
    assert pl.read_parquet(out).columns == list(triples.COLUMNS)

    def torn_write(self: pl.DataFrame, file: object, *args: object, **kwargs: object) -> None:
        Path(str(file)).write_bytes(b"PAR1 torn")
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", torn_write)
    with pytest.raises(OSError, match="disk full"):
        clean(CleanConfig(inputs=[str(run)], out=str(out), chart="", **NO_GATE))
    assert out.read_bytes() == before


def test_clean_reads_synth_output_only_through_formats() -> None:
    assert ("cleaning", "formats") in imports()
    assert ("cleaning", "synth") not in imports()
