"""Public datasets as training triples: what ``e5x train`` reads beside the synthetic data.

The recipe mixes the synthetic data with 13 public datasets, each with its own instruction.
They come in a few layouts; each function here turns one layout into training triples
(``e5x.formats.triples.COLUMNS``), one row per (query, positive), keeping the input order:

- ``beir_triples``: a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/{split}.tsv``):
  MS-MARCO, NQ, HotpotQA, FEVER, FiQA, SciFact... as BEIR and MTEB distribute them;
- ``sts_triples``: STS-Benchmark files, the pairs scored at least ``min_score``;
- ``table_triples``: any table (.parquet, .jsonl, .csv, .tsv, or a polars DataFrame, e.g. a
  Hugging Face dataset's ``to_polars()``) with a query, a positive and optionally a
  negative column, such as sentence-transformers' (anchor, positive, negative) sets.

Datasets without hard negatives get them from ``e5x mine`` (``e5x.data.negatives``).
The readers are the ones evaluation uses too (``e5x.formats.benchmark``): a malformed line is an error naming
the file and line, and an empty query or positive one naming the file, row and column.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from e5x.formats.triples import COLUMNS, DataError, blank_negatives_to_null, is_blank
from e5x.formats.benchmark import doc_text, load_qrels, load_queries, load_sts, qrels_file, read_jsonl_objects
from e5x.tasks.instructions import TYPE_DEFAULTS, instruction_for

TABLE_SUFFIXES = (".parquet", ".jsonl", ".ndjson", ".csv", ".tsv")


def _frame(
    columns: pl.DataFrame, *, instruction: str | None, task_type: str | None, language: str | None, source: str | None
) -> pl.DataFrame:
    """``columns`` (query, positive and any of negative/instruction) completed to COLUMNS:
    the missing ones are the given constants."""
    fixed = {"instruction": instruction, "negative": None, "task_type": task_type, "language": language,
             "model": None, "source": source}  # fmt: skip
    return columns.select(
        pl.col(c).cast(pl.Utf8) if c in columns.columns else pl.lit(fixed[c], dtype=pl.Utf8).alias(c) for c in COLUMNS
    )


def beir_triples(
    folder: str | Path,
    split: str = "train",
    *,
    instruction: str | None = None,
    min_score: int = 1,
    source: str | None = None,
    language: str | None = "en",
) -> pl.DataFrame:
    """One triple per judgement of ``qrels/{split}.tsv`` scored ``>= min_score``.

    The document is ``title + " " + text`` (as BEIR search builds it); the instruction is
    ``instruction`` or, by default, E5-mistral's for the folder's MTEB task (``scifact`` ->
    SciFact's), else the generic retrieval one. Only judged documents are kept in memory, so
    a corpus of millions of passages streams through. A judgement whose query or document is
    missing is an error naming the qrels file and line: a silent skip would change the data.
    """
    folder = Path(folder)
    qrels_path = qrels_file(folder, split)
    judged = [(q, d) for q, rel in load_qrels(qrels_path).items() for d, score in rel.items() if score >= min_score]
    if not judged:
        raise DataError(f"{qrels_path}: no judgement scored >= {min_score}")
    queries = load_queries(folder / "queries.jsonl")
    wanted = {d for _, d in judged}
    docs: dict[str, str] = {}
    for _, obj in read_jsonl_objects(folder / "corpus.jsonl"):
        did = str(obj.get("_id", ""))
        if did in wanted and did not in docs:
            docs[did] = doc_text(obj)
    for n, (q, d) in enumerate(judged):
        where = f"{qrels_path}: judgement {n + 1} ({q!r}, {d!r})"
        if q not in queries:
            raise DataError(f"{where}: query {q!r} is not in {folder / 'queries.jsonl'}")
        if d not in docs:
            raise DataError(f"{where}: document {d!r} is not in {folder / 'corpus.jsonl'}")
        if not queries[q].strip() or not docs[d]:
            raise DataError(f"{where}: the {'query' if not queries[q].strip() else 'document'} text is empty")
    if instruction is None:
        instruction = instruction_for(folder.name, "Retrieval")
    return _frame(
        pl.DataFrame({"query": [queries[q] for q, _ in judged], "positive": [docs[d] for _, d in judged]}),
        instruction=instruction, task_type="retrieval", language=language, source=source or folder.name,
    )  # fmt: skip


def sts_triples(
    path: str | Path,
    split: str = "train",
    *,
    min_score: float = 4.0,
    instruction: str = TYPE_DEFAULTS["sts"],
    source: str | None = None,
    language: str | None = "en",
) -> pl.DataFrame:
    """(sentence1, sentence2) of every STS-Benchmark pair scored ``>= min_score`` (0-5), as
    (query, positive) with the paper's STS instruction. ``path`` is a file or a folder with
    ``sts-{split}.csv``."""
    data = load_sts(path, split)
    keep = [i for i, s in enumerate(data.scores) if s >= min_score]
    if not keep:
        raise DataError(f"{path}: no pair scored >= {min_score}")
    return _frame(
        pl.DataFrame({"query": [data.sentences1[i] for i in keep], "positive": [data.sentences2[i] for i in keep]}),
        instruction=instruction, task_type="sts", language=language, source=source or f"sts-{split}",
    )  # fmt: skip


def read_table(path: str | Path) -> pl.DataFrame:
    """A .parquet, .jsonl/.ndjson, .csv or .tsv file as a polars DataFrame (strings kept as
    written: no type inference on CSV)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pl.read_parquet(path)
        if suffix in (".jsonl", ".ndjson"):
            return pl.read_ndjson(path, infer_schema_length=None)
        if suffix in (".csv", ".tsv"):
            return pl.read_csv(path, separator="\t" if suffix == ".tsv" else ",", infer_schema=False,
                               quote_char=None if suffix == ".tsv" else '"')  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - polars raises several types for a bad file
        raise DataError(f"{path}: not a readable {suffix[1:]} file ({exc})") from None
    raise DataError(f"{path}: unknown table format {suffix!r} (expected one of {', '.join(TABLE_SUFFIXES)})")


def table_triples(
    table: str | Path | pl.DataFrame,
    *,
    query: str = "query",
    positive: str = "positive",
    negative: str | None = None,
    instruction: str | None = None,
    instruction_column: str | None = None,
    source: str | None = None,
    task_type: str | None = None,
    language: str | None = None,
    drop_empty: bool = False,
) -> tuple[pl.DataFrame, int]:
    """Triples from the named columns of a table; returns (triples, rows dropped).

    ``instruction`` gives every row one instruction (the paper's public datasets each have
    one); ``instruction_column`` reads it per row instead. An empty or null query or positive
    is an error naming the row and column, or, with ``drop_empty``, a dropped row (counted);
    an empty negative means none (in-batch negatives only for that row).
    """
    where = "table" if isinstance(table, pl.DataFrame) else str(table)
    df = table if isinstance(table, pl.DataFrame) else read_table(table)
    if instruction is not None and instruction_column is not None:
        raise ValueError("give instruction or instruction_column, not both")
    wanted = {"query": query, "positive": positive, "negative": negative, "instruction": instruction_column}
    missing = [f"{name}={col!r}" for name, col in wanted.items() if col is not None and col not in df.columns]
    if missing:
        raise DataError(f"{where}: no column for {', '.join(missing)} (columns: {df.columns})")
    picked = {name: col for name, col in wanted.items() if col is not None}
    for name, col in picked.items():
        if df.schema[col] not in (pl.Utf8, pl.Null):
            raise DataError(f"{where}: column {col!r} ({name}) must hold strings, got {df.schema[col]}")
    df = df.select(pl.col(col).cast(pl.Utf8).alias(name) for name, col in picked.items())
    dropped = 0
    for name in ("query", "positive"):
        bad = df.with_row_index("_row").filter(is_blank(name))["_row"]
        if bad.len() and not drop_empty:
            raise DataError(f"{where}: row {bad[0]}: column {picked[name]!r} ({name}) is empty or null "
                            f"({bad.len()} such rows; drop_empty / --drop-empty skips them)")  # fmt: skip
        dropped += bad.len()
        df = df.filter(~is_blank(name))
    if df.height == 0:
        raise DataError(f"{where}: no rows left")
    if "negative" in df.columns:
        df = blank_negatives_to_null(df)
    default_source = None if isinstance(table, pl.DataFrame) else Path(table).stem
    return _frame(df, instruction=instruction, task_type=task_type, language=language,
                  source=source or default_source), dropped  # fmt: skip
