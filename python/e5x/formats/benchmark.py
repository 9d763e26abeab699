"""Readers for BEIR-format retrieval folders and STS-Benchmark files, with strict errors.

Every malformed line is reported as ``file:line: what is wrong``; nothing is silently
dropped except queries without judgements, which are counted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


class FormatError(ValueError):
    """Bad evaluation data; the message names the file and line."""


@dataclass
class RetrievalData:
    """One split of a BEIR folder, ready to search."""

    name: str
    corpus_ids: list[str]
    corpus_texts: list[str]
    query_ids: list[str]  # only queries with judgements in this split
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]
    skipped_queries: int = 0  # queries in queries.jsonl without judgements in this split
    missing_docs: int = 0  # judged documents absent from the corpus
    stats: dict[str, int] = field(default_factory=dict)


@dataclass
class STSData:
    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]


def read_jsonl_objects(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) per non-blank line of a JSON Lines file; a line that is not a
    JSON object is an FormatError naming the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise FormatError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise FormatError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    rows: list[tuple[int, dict]] = []
    for lineno, obj in read_jsonl_objects(path):
        for key in required:
            if key not in obj:
                raise FormatError(f"{path}:{lineno}: missing field {key!r}")
        for key in ("_id", "title", "text"):
            if key in obj and obj[key] is not None and not isinstance(obj[key], (str, int)):
                raise FormatError(f"{path}:{lineno}: field {key!r} must be a string, got {type(obj[key]).__name__}")
        rows.append((lineno, obj))
    return rows


def doc_text(doc: dict) -> str:
    """``title + " " + text`` as BEIR/MTEB exact search builds it (bare text without a title)."""
    title = doc.get("title") or ""
    text = doc.get("text") or ""
    return f"{title} {text}".strip() if title else str(text).strip()


def load_corpus(path: Path) -> tuple[list[str], list[str]]:
    ids: list[str] = []
    texts: list[str] = []
    seen: dict[str, int] = {}
    for lineno, obj in _read_jsonl(path, ("_id", "text")):
        did = str(obj["_id"])
        if did in seen:
            raise FormatError(f"{path}:{lineno}: duplicate _id {did!r} (first on line {seen[did]})")
        seen[did] = lineno
        ids.append(did)
        texts.append(doc_text(obj))
    if not ids:
        raise FormatError(f"{path}: the corpus is empty")
    return ids, texts


def load_queries(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    lines: dict[str, int] = {}
    for lineno, obj in _read_jsonl(path, ("_id", "text")):
        qid = str(obj["_id"])
        if qid in out:
            raise FormatError(f"{path}:{lineno}: duplicate _id {qid!r} (first on line {lines[qid]})")
        lines[qid] = lineno
        out[qid] = str(obj["text"])
    return out


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    """``query-id<TAB>corpus-id<TAB>score`` lines; a header line is optional."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if lineno == 1 and len(parts) >= 3 and parts[0].strip().lower() in ("query-id", "query_id", "qid"):
                continue
            if len(parts) == 4:  # TREC style: qid 0 docid score
                parts = [parts[0], parts[2], parts[3]]
            if len(parts) != 3:
                raise FormatError(
                    f"{path}:{lineno}: expected 3 TAB-separated fields (query-id, corpus-id, score), got {len(parts)}"
                )
            qid, did, score_s = (p.strip() for p in parts)
            if not qid or not did:
                raise FormatError(f"{path}:{lineno}: empty query-id or corpus-id")
            try:
                score = int(float(score_s))
            except ValueError:
                raise FormatError(f"{path}:{lineno}: score {score_s!r} is not a number") from None
            qrels.setdefault(qid, {})[did] = score
    return qrels


def qrels_file(folder: Path, split: str) -> Path:
    """``folder/qrels/{split}.tsv``; when missing, the error lists the splits that exist."""
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise FileNotFoundError(f"{qrels_path} not found (splits with qrels: {available or 'none'})")
    return qrels_path


def load_beir(folder: str | Path, split: str = "test", name: str | None = None) -> RetrievalData:
    """Load ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/{split}.tsv`` from a BEIR folder."""
    folder = Path(folder)
    qrels_path = qrels_file(folder, split)
    corpus_ids, corpus_texts = load_corpus(folder / "corpus.jsonl")
    queries = load_queries(folder / "queries.jsonl")
    qrels = load_qrels(qrels_path)
    if not qrels:
        raise FormatError(f"{qrels_path}: no judgements")

    unknown = [q for q in qrels if q not in queries]
    if unknown:
        raise FormatError(
            f"{qrels_path}: {len(unknown)} judged query ids are not in {folder / 'queries.jsonl'} (e.g. {unknown[0]!r})"
        )
    doc_set = set(corpus_ids)
    missing_docs = sum(1 for rel in qrels.values() for d in rel if d not in doc_set)
    if missing_docs:
        log.warning("%s: %d judged documents are not in the corpus", qrels_path, missing_docs)
    query_ids = [q for q in queries if q in qrels]
    skipped = len(queries) - len(query_ids)
    if skipped:
        log.info("%s: %d queries have no judgements in split %r; skipped", folder, skipped, split)
    return RetrievalData(
        name=name or folder.name,
        corpus_ids=corpus_ids,
        corpus_texts=corpus_texts,
        query_ids=query_ids,
        query_texts=[queries[q] for q in query_ids],
        qrels=qrels,
        skipped_queries=skipped,
        missing_docs=missing_docs,
        stats={
            "documents": len(corpus_ids),
            "queries": len(query_ids),
            "judgements": sum(len(r) for r in qrels.values()),
        },
    )


def sts_file(path: str | Path, split: str = "test") -> Path:
    """The STS-B file of a split: ``path`` itself, or ``path/sts-{split}.csv``."""
    path = Path(path)
    if path.is_dir():
        path = path / f"sts-{split}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return path


def load_sts(path: str | Path, split: str = "test", name: str | None = None) -> STSData:
    """STS-Benchmark lines: TAB-separated, score in field 4, sentences in fields 5 and 6.

    Sentences contain quotes, so no quoting CSV reader; extra trailing fields are ignored.
    """
    path = sts_file(path, split)
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 7:
                raise FormatError(
                    f"{path}:{lineno}: expected at least 7 TAB-separated fields "
                    f"(genre, file, year, id, score, sentence1, sentence2), got {len(parts)}"
                )
            try:
                score = float(parts[4])
            except ValueError:
                raise FormatError(f"{path}:{lineno}: score {parts[4]!r} is not a number") from None
            if not parts[5].strip() or not parts[6].strip():
                raise FormatError(f"{path}:{lineno}: empty sentence")
            scores.append(score)
            s1.append(parts[5])
            s2.append(parts[6])
    if not scores:
        raise FormatError(f"{path}: no sentence pairs")
    if name is None:
        name = path.parent.name if path.name.startswith("sts-") else path.stem
    return STSData(name=name, sentences1=s1, sentences2=s2, scores=scores)
