"""Training triples: Parquet files of string columns, one row per (query, positive).

``COLUMNS`` is the full set, in the order ``e5x clean`` writes it. Only ``REQUIRED`` is
needed to train; the others are optional on read (public datasets converted by hand may
lack them). A null, empty or whitespace-only value is "no value" in every column
(:func:`is_blank`); a row with no negative trains on in-batch negatives only. Files are
written whole (:func:`write_triples`), so a reader never sees a partial one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import polars as pl

COLUMNS: tuple[str, ...] = (
    "instruction",
    "query",
    "positive",
    "negative",
    "task_type",
    "language",
    "model",
    "source",
)
REQUIRED: tuple[str, ...] = ("query", "positive")
# What training reads of each row, in this order.
TRAINING_COLUMNS: tuple[str, ...] = ("instruction", "query", "positive", "negative")


class DataError(ValueError):
    """Bad training data; the message names the file, row and field."""


def schema() -> dict[str, pl.DataType]:
    """``COLUMNS`` with their type: every column holds strings."""
    return {c: pl.Utf8() for c in COLUMNS}


def is_blank(col: str) -> pl.Expr:
    """Null, empty or whitespace: "no value" in every text column of the triples."""
    return pl.col(col).is_null() | (pl.col(col).cast(pl.Utf8).str.strip_chars() == "")


def blank_negatives_to_null(df: pl.DataFrame) -> pl.DataFrame:
    """An empty negative means "none": in-batch negatives only for that row."""
    return df.with_columns(pl.when(is_blank("negative")).then(None).otherwise(pl.col("negative")).alias("negative"))


def check_schema(f: Path, schema: Mapping[str, pl.DataType]) -> None:
    """Raise :class:`DataError` naming ``f`` unless ``schema`` has the required columns
    and every column of ``COLUMNS`` it has holds strings."""
    missing = [c for c in REQUIRED if c not in schema]
    if missing:
        raise DataError(
            f"{f}: missing column(s) {missing}; training triples need {list(REQUIRED)} "
            f"(and optionally {[c for c in COLUMNS if c not in REQUIRED]})"
        )
    for col in COLUMNS:
        if col in schema and schema[col] not in (pl.Utf8, pl.Null):
            raise DataError(f"{f}: column {col!r} must be a string column, got {schema[col]}")


def count_triples(f: Path) -> tuple[int, int, int]:
    """Rows, rows with a negative and rows with an instruction of one file, from its
    schema and columns (no full load); the schema is checked first."""
    try:
        schema = pl.read_parquet_schema(f)
    except Exception as exc:  # noqa: BLE001 - polars raises several types
        raise DataError(f"{f}: not a readable Parquet file ({exc})") from exc
    check_schema(f, schema)
    counts = [pl.len().alias("rows")]
    counts += [(~is_blank(c)).sum().alias(c) for c in ("negative", "instruction") if c in schema]
    got = pl.scan_parquet(f).select(counts).collect().row(0, named=True)
    return got["rows"], got.get("negative", 0), got.get("instruction", 0)


def read_triples(f: Path) -> pl.DataFrame:
    """The ``TRAINING_COLUMNS`` of one file as strings (a missing optional column is
    null). An empty or null query or positive is an error naming the file and row."""
    df = pl.read_parquet(f)
    check_schema(f, df.schema)
    for col in ("instruction", "negative"):
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=pl.Utf8).alias(col))
    df = df.select([pl.col(c).cast(pl.Utf8) for c in TRAINING_COLUMNS])
    for col in REQUIRED:
        bad = df.with_row_index("row").filter(is_blank(col))
        if bad.height:
            row = bad["row"][0]
            raise DataError(f"{f}: row {row}: field {col!r} is empty or null")
    return df


def write_triples(df: pl.DataFrame, path: str | Path) -> int:
    """Write triples to ``path`` (.parquet) through a temporary name, so a failure never
    leaves a partial file; returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.write_parquet(tmp)
    tmp.replace(path)
    return df.height
