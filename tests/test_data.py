"""Training triples: reading, errors, mixing, the resumable batch plan, batch layout."""

from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl
import pytest

from _tiny import tiny_tokenizer, toy_triples
from e5x.data import BatchPlan, DataError, Source, TripleStore, check_source, collate, read_source, shard


def test_read_source_instruction_override_and_empty_negative(tmp_path) -> None:
    df = toy_triples(6).with_columns(
        pl.when(pl.int_range(pl.len()) == 2).then(pl.lit("")).otherwise(pl.col("negative")).alias("negative")
    )
    df.write_parquet(tmp_path / "a.parquet")
    out = read_source(Source(str(tmp_path / "a.parquet"), instruction="Do X"))
    assert out.columns == ["instruction", "query", "positive", "negative"]
    assert set(out["instruction"]) == {"Do X"}
    assert out["negative"][2] is None  # "" means no hard negative


def test_missing_columns_and_negative_optional(tmp_path) -> None:
    pl.DataFrame({"query": ["q"], "positive": ["p"]}).write_parquet(tmp_path / "min.parquet")
    out = read_source(Source(str(tmp_path / "min.parquet")))
    assert out["negative"].to_list() == [None] and out["instruction"].to_list() == [None]
    pl.DataFrame({"query": ["q"], "doc": ["p"]}).write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet.*missing column.*positive"):
        check_source(Source(str(tmp_path / "bad.parquet")))


def test_errors_name_file_row_field(tmp_path) -> None:
    with pytest.raises(DataError, match="nope.parquet: training data file not found"):
        check_source(Source(str(tmp_path / "nope.parquet")))
    toy_triples(3).head(0).write_parquet(tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="no rows"):
        check_source(Source(str(tmp_path / "empty.parquet")))
    df = toy_triples(4).with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("  ")).otherwise(pl.col("query")).alias("query")
    )
    df.write_parquet(tmp_path / "blank.parquet")
    with pytest.raises(DataError, match=r"blank\.parquet: row 3: field 'query'"):
        read_source(Source(str(tmp_path / "blank.parquet")))
    pl.DataFrame({"query": [1], "positive": ["p"]}).write_parquet(tmp_path / "int.parquet")
    with pytest.raises(DataError, match="'query' must be a string column"):
        check_source(Source(str(tmp_path / "int.parquet")))


def test_directory_of_parquet_files(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    toy_triples(3, seed=1).write_parquet(tmp_path / "d" / "part-0.parquet")
    toy_triples(4, seed=2).write_parquet(tmp_path / "d" / "part-1.parquet")
    assert read_source(Source(str(tmp_path / "d"))).height == 7


def test_plan_ratios_determinism_and_resume() -> None:
    plan = BatchPlan([100, 50], [0.1, 2.0], batch_size=10, seed=3)
    assert plan.counts == [10, 100] and plan.steps_per_epoch == 11
    epoch = plan.epoch(0)
    assert Counter(epoch[:, :, 0].ravel().tolist()) == {0: 10, 1: 100}
    rows = Counter(map(tuple, epoch.reshape(-1, 2).tolist()))
    assert all(rows[(1, r)] == 2 for r in range(50))  # ratio 2.0: every row exactly twice
    assert all(n == 1 for (s, _), n in rows.items() if s == 0)  # ratio 0.1: 10 distinct rows
    again = BatchPlan([100, 50], [0.1, 2.0], batch_size=10, seed=3)
    for step in (0, 5, 10, 11, 25):  # a fresh plan gives the same batch for any step: resumable
        assert np.array_equal(plan.batch(step), again.batch(step))
    assert not np.array_equal(plan.batch(0), plan.batch(11))  # epochs reshuffle
    other = BatchPlan([100, 50], [0.1, 2.0], batch_size=10, seed=4)
    assert not np.array_equal(plan.batch(0), other.batch(0))


def test_plan_task_homogeneous() -> None:
    plan = BatchPlan([40, 25, 3], [1.0, 1.0, 1.0], batch_size=8, task_homogeneous=True)
    assert plan.steps_per_epoch == 5 + 3  # per-source floor; source 2 is too small for a batch
    for b in plan.epoch(0):
        assert len(set(b[:, 0].tolist())) == 1
    with pytest.raises(ValueError, match="larger than the data"):
        BatchPlan([3], [1.0], batch_size=8)


def test_collate_layout_and_shard(tmp_path) -> None:
    df = toy_triples(4)
    df = df.with_columns(
        pl.when(pl.int_range(pl.len()) == 1).then(None).otherwise(pl.col("negative")).alias("negative")
    )
    df.write_parquet(tmp_path / "t.parquet")
    store = TripleStore([Source(str(tmp_path / "t.parquet"))])
    tok = tiny_tokenizer()
    pairs = np.array([[0, 0], [0, 1], [0, 2], [0, 3]])
    batch = collate(store, pairs, tok, max_length=64)
    assert batch.num_queries == 4 and batch.num_docs == 4 + 3  # row 1 has no hard negative
    q0 = tok.decode(batch.queries["input_ids"][0], skip_special_tokens=True)
    assert q0 == f"Instruct: {df['instruction'][0]}\nQuery: {df['query'][0]}"
    d1 = tok.decode(batch.docs["input_ids"][1][batch.docs["attention_mask"][1].bool()], skip_special_tokens=True)
    assert d1 == df["positive"][1]  # positives first, in query order
    d4 = tok.decode(batch.docs["input_ids"][4][batch.docs["attention_mask"][4].bool()], skip_special_tokens=True)
    assert d4 == df["negative"][0]
    assert batch.num_tokens == int(batch.queries["attention_mask"].sum() + batch.docs["attention_mask"].sum())
    assert shard(pairs, 1, 2).tolist() == [[0, 2], [0, 3]]
    with pytest.raises(ValueError, match="not divisible"):
        shard(pairs, 0, 3)


def test_mixed_sources_keep_their_own_instructions(tmp_path) -> None:
    toy_triples(5, seed=1).write_parquet(tmp_path / "a.parquet")
    toy_triples(5, seed=2).drop("instruction").write_parquet(tmp_path / "b.parquet")
    store = TripleStore(
        [Source(str(tmp_path / "a.parquet"), instruction="Task A"), Source(str(tmp_path / "b.parquet"))]
    )  # b: no instruction at all
    plan = BatchPlan(store.sizes, [1.0, 1.0], batch_size=10, seed=0)
    pairs = plan.batch(0)
    rows = store.rows(pairs.tolist())
    for (source, row), (instruction, query, _pos, _neg) in zip(pairs.tolist(), rows):
        assert instruction == ("Task A" if source == 0 else None)
        assert query == store.frames[source]["query"][row]
    tok = tiny_tokenizer()
    batch = collate(store, pairs, tok, max_length=64)
    texts = tok.batch_decode(batch.queries["input_ids"], skip_special_tokens=True)
    for (source, row), text in zip(pairs.tolist(), texts):
        q = store.frames[source]["query"][row]
        assert text == (f"Instruct: Task A\nQuery: {q}" if source == 0 else q)  # bare without one
