"""Hard negatives for training triples that have none.

Public retrieval data mostly comes as (query, positive) pairs, and the recipe trains each
query against a hard negative besides the in-batch ones. The mining itself is
sentence-transformers' ``mine_hard_negatives`` (dense retrieval of every query over the
rows' positives plus an optional extra corpus, a rank window that skips the closest
candidates, and a margin against false negatives: candidates scoring within
``relative_margin`` of the positive are dropped); this module maps training triples
(``e5x.formats.triples.COLUMNS``) in and out of it. Needs the ``mine`` extra
(``pip install 'e5x[mine]'``: sentence-transformers and datasets).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from e5x._extras import require
from e5x.formats.triples import REQUIRED, DataError, write_triples


@dataclass(frozen=True)
class MiningReport:
    rows: int  # rows in the input
    wanted: int  # rows that asked for a negative (null negative, or all with overwrite)
    mined: int  # of those, rows that got one
    corpus: int  # distinct candidate documents searched


def mine_hard_negatives(
    triples: pl.DataFrame,
    model: Any,
    *,
    corpus: Sequence[str] | None = None,
    range_min: int = 10,
    range_max: int = 50,
    relative_margin: float | None = 0.05,
    sampling: str = "random",
    overwrite: bool = False,
    batch_size: int = 64,
    seed: int = 0,
    show_progress: bool = False,
    query_prompt: str = "",
    passage_prompt: str = "",
) -> tuple[pl.DataFrame, MiningReport]:
    """Fill the ``negative`` column of training triples with mined hard negatives.

    ``model``: a ``SentenceTransformer`` or a path/name to load one from (a model saved by
    ``e5x train`` has the sentence-transformers files). Candidates are every distinct
    positive in ``triples`` plus ``corpus``; a query's own positives (all rows with the same
    query text) are never its negatives. Of the candidates ranked ``range_min`` to
    ``range_max`` by similarity that pass the margin, one is taken (``sampling="random"``,
    seeded, or ``"top"``). Rows that already have a negative keep it unless ``overwrite``;
    rows for which no candidate passes keep a null negative (counted in the report).
    ``query_prompt`` / ``passage_prompt`` go before queries / candidates when embedding
    (E5 miners need ``"query: "`` / ``"passage: "``; the texts written out stay bare).
    Returns the triples in their input order with their columns, and a MiningReport.
    """
    missing = [c for c in REQUIRED if c not in triples.columns]
    if missing:
        raise DataError(f"training triples lack the column(s) {missing} (have {triples.columns})")
    for c in REQUIRED:
        nulls = triples[c].null_count()
        if nulls:
            row = int(triples.with_row_index().filter(pl.col(c).is_null())["index"][0])
            raise DataError(f"training triples: row {row}: {c!r} is null ({nulls} such rows)")
    if sampling not in ("random", "top"):
        raise ValueError(f"sampling must be 'random' or 'top', got {sampling!r}")
    df = triples if "negative" in triples.columns else triples.with_columns(negative=pl.lit(None, pl.Utf8))
    want = pl.lit(True) if overwrite else pl.col("negative").is_null()
    df = df.with_columns(_want=want)
    todo = df.filter("_want").select("query", "positive").unique(maintain_order=True)
    candidates = list(dict.fromkeys([*df["positive"].to_list(), *(corpus or [])]))
    if todo.height == 0:
        return df.drop("_want"), MiningReport(df.height, 0, 0, len(candidates))

    require("hard-negative mining", "mine")
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives as st_mine

    st = model if isinstance(model, SentenceTransformer) else SentenceTransformer(str(model))
    # every positive of a query is excluded from its candidates, not only the rows asking
    pairs = df.select("query", "positive").unique(maintain_order=True)
    asking = set(todo["query"].to_list())
    pairs = pairs.filter(pl.col("query").is_in(list(asking)))
    prompts: dict[str, Any] = {
        k: v for k, v in (("query_prompt", query_prompt), ("corpus_prompt", passage_prompt)) if v
    }
    state = random.getstate()
    random.seed(seed)  # sentence-transformers samples with the `random` module
    try:
        mined = st_mine(
            Dataset.from_dict({"query": pairs["query"].to_list(), "positive": pairs["positive"].to_list()}),
            st,
            anchor_column_name="query",
            positive_column_name="positive",
            corpus=candidates,
            range_min=range_min,
            range_max=min(range_max, len(candidates)),
            relative_margin=relative_margin,
            num_negatives=1,
            sampling_strategy=sampling,  # type: ignore[arg-type]  # checked: "random" or "top"
            output_format="triplet",
            batch_size=batch_size,
            verbose=show_progress,
            **prompts,
        )
    finally:
        random.setstate(state)
    found = pl.DataFrame(
        {"query": mined["query"], "positive": mined["positive"], "_mined": mined["negative"]},
        schema={"query": pl.Utf8, "positive": pl.Utf8, "_mined": pl.Utf8},
    ).unique(subset=["query", "positive"], keep="first", maintain_order=True)
    out = df.join(found, on=["query", "positive"], how="left", maintain_order="left").with_columns(
        negative=pl.when("_want").then(pl.col("_mined")).otherwise(pl.col("negative"))
    )
    wanted = int(out["_want"].sum())
    got = int(out.filter(pl.col("_want") & pl.col("negative").is_not_null()).height)
    return out.drop("_mined", "_want"), MiningReport(df.height, wanted, got, len(candidates))


def mine_file(src: str | Path, dst: str | Path, model: Any, **kwargs: Any) -> MiningReport:
    """``mine_hard_negatives`` from one triples Parquet file to another (written to a
    temporary name first, so a failure never leaves a partial ``dst``)."""
    src, dst = Path(src), Path(dst)
    try:
        triples = pl.read_parquet(src)
    except Exception as exc:  # noqa: BLE001 - polars raises several types for a bad file
        raise DataError(f"{src}: not a readable Parquet file ({exc})") from None
    try:
        out, report = mine_hard_negatives(triples, model, **kwargs)
    except DataError as exc:
        raise DataError(f"{src}: {exc}") from None
    write_triples(out, dst)
    return report
