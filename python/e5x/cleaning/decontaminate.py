"""Decontamination: training texts that also appear in evaluation sets.

As the E5-mistral authors did for their synthetic data, a training text overlaps an
evaluation text when the two are equal once case and spacing are ignored (Unicode NFKC,
runs of whitespace collapsed, full case folding). The matching is the Rust core's
deduplicator (``e5x.core.Deduplicator``: xxh3-128 of the normalised text, all
cores), so millions of training rows against every evaluation set take seconds.

Evaluation texts come from BEIR folders (the queries of a split and the documents judged
for them), STS-Benchmark files (both sentences of every pair), or plain files (``.txt``:
one text per line; ``.jsonl``: a ``text`` field). Registered evaluation sets are named by
their fetched folders (``e5x.data.download.resolve``, which the CLI applies).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from e5x.core import Deduplicator

TEXT_COLUMNS = ("query", "positive", "negative")


@dataclass(frozen=True)
class EvalTexts:
    """The texts of one evaluation set, each with where it comes from (an id or a line)."""

    name: str
    texts: list[str]
    where: list[str]


def eval_texts(path: str | Path, split: str = "test") -> EvalTexts:
    """The evaluation texts at ``path``: a BEIR folder, an STS-B file or folder, or a
    ``.txt`` / ``.jsonl`` file (see the module)."""
    from e5x.formats.benchmark import doc_text, load_qrels, load_queries, load_sts, qrels_file, read_jsonl_objects

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir() and (path / "corpus.jsonl").is_file():
        qrels = load_qrels(qrels_file(path, split))
        queries = load_queries(path / "queries.jsonl")
        judged = {d for rel in qrels.values() for d in rel}
        texts = [queries[q] for q in qrels if q in queries]
        where = [f"query {q}" for q in qrels if q in queries]
        for _, obj in read_jsonl_objects(path / "corpus.jsonl"):
            if str(obj.get("_id")) in judged:
                texts.append(doc_text(obj))
                where.append(f"document {obj['_id']}")
        return EvalTexts(path.name, texts, where)
    if path.suffix in (".txt", ".jsonl"):
        if path.suffix == ".txt":
            lines = [(n, t) for n, t in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if t.strip()]
        else:
            lines = [(n, str(obj.get("text", ""))) for n, obj in read_jsonl_objects(path)]
        return EvalTexts(path.stem, [t for _, t in lines], [f"line {n}" for n, _ in lines])
    sts = load_sts(path, split)
    n = len(sts.scores)
    where = [f"pair {i + 1} sentence1" for i in range(n)] + [f"pair {i + 1} sentence2" for i in range(n)]
    return EvalTexts(sts.name, sts.sentences1 + sts.sentences2, where)


def find_overlaps(
    triples: pl.DataFrame, evals: Iterable[EvalTexts], columns: Sequence[str] = TEXT_COLUMNS
) -> pl.DataFrame:
    """Every (training row, column) whose text equals an evaluation text, case and spacing
    ignored: columns ``row``, ``column``, ``eval_set``, ``eval_where``, ``text``."""
    evals = list(evals)
    flat = [t for e in evals for t in e.texts]
    origin = [(e.name, w) for e in evals for w in e.where]
    dedup = Deduplicator(casefold=True)
    dedup.add(pl.DataFrame({"t": flat}, schema={"t": pl.String}), ["t"])
    n_eval = len(flat)
    found = []
    for col in (c for c in columns if c in triples.columns):
        text = triples.get_column(col).cast(pl.String)
        # Keep-first: a training text equal to an evaluation text points at that text (an
        # index below n_eval); one equal only to an earlier training text points at it.
        hit = dedup.add(pl.DataFrame({"t": text}), ["t"])["duplicate_of"]
        rows = (hit < n_eval).fill_null(False).arg_true()
        for r in rows.to_list():
            name, where = origin[int(hit[r])]
            found.append((r, col, name, where, text[r]))
    return pl.DataFrame(found, schema={"row": pl.Int64, "column": pl.String, "eval_set": pl.String,
                                       "eval_where": pl.String, "text": pl.String}, orient="row")  # fmt: skip


def decontaminate(
    triples: pl.DataFrame, against: Sequence[str | Path], *, split: str = "test", drop: bool = True
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(triples without the overlapping rows, or all of them if not ``drop``; the overlaps)."""
    overlaps = find_overlaps(triples, [eval_texts(a, split) for a in against])
    if drop and overlaps.height:
        bad = overlaps["row"].unique().to_list()
        triples = triples.with_row_index("_row").filter(~pl.col("_row").is_in(bad)).drop("_row")
    return triples, overlaps
