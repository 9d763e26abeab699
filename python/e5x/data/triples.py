"""Training data sources (files, ratios, instructions) and their rows in memory; the
triples format itself is ``e5x.formats.triples``."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

# The format's names stay importable from here (``from e5x.data.triples import COLUMNS``).
from e5x.formats.triples import COLUMNS as COLUMNS
from e5x.formats.triples import REQUIRED as REQUIRED
from e5x.formats.triples import DataError as DataError
from e5x.formats.triples import blank_negatives_to_null as blank_negatives_to_null
from e5x.formats.triples import count_triples, read_triples
from e5x.formats.triples import is_blank as is_blank
from e5x.formats.triples import write_triples as write_triples


@dataclass(frozen=True)
class Source:
    """One training data source.

    ``ratio`` scales how many of its rows one epoch draws (0.1 = a random 10%, 2.0 = every
    row twice), as the paper's per-dataset sampling ratios. ``instruction``, when set,
    replaces the per-row ``instruction`` column (public datasets have one instruction each).
    ``dataset`` names a registered training set (``e5x data list``); ``path`` is then its
    prepared triples (``e5x data prepare``).
    """

    path: str = ""
    ratio: float = 1.0
    instruction: str | None = None
    name: str | None = None
    dataset: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.dataset or Path(self.path).stem

    @property
    def unprepared(self) -> bool:
        """A registered dataset whose triples have not been prepared yet."""
        return bool(self.dataset) and not Path(self.path).is_file()

    @property
    def missing(self) -> bool:
        """No data yet: a registered dataset not prepared, or no Parquet file at ``path``."""
        if self.dataset:
            return self.unprepared
        try:
            _files(self.path)
        except DataError:
            return True
        return False

    def files(self) -> list[Path]:
        """The Parquet files of ``path`` in the order they are read (a file, a folder's
        files, or a glob's matches, sorted)."""
        return _files(self.path)


def _files(path: str) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        files = sorted(p.rglob("*.parquet"))
    elif any(ch in path for ch in "*?["):
        files = sorted(Path(f) for f in glob.glob(path, recursive=True))
    else:
        files = [p]
    if not files:
        raise DataError(f"{path}: no Parquet files found")
    for f in files:
        if not f.is_file():
            raise DataError(f"{f}: training data file not found")
    return files


@dataclass(frozen=True)
class SourceStats:
    rows: int
    with_negative: int  # rows with a hard negative (non-empty)
    without_instruction: int  # rows whose queries train bare (no per-source or per-row instruction)


def check_source(source: Source) -> SourceStats:
    """Cheap checks before any model is loaded: files exist, columns, at least one row.
    Returns the source's row counts (read from the Parquet columns, no full load)."""
    if not source.ratio > 0:
        raise DataError(f"{source.path or source.label}: ratio must be > 0, got {source.ratio}")
    if source.unprepared:
        raise DataError(f"source {source.label!r}: dataset {source.dataset!r} is not prepared yet "
                        f"(e5x data prepare {source.dataset})")  # fmt: skip
    rows = negatives = instructed = 0
    for f in _files(source.path):
        r, n, i = count_triples(f)
        rows, negatives, instructed = rows + r, negatives + n, instructed + i
    if rows == 0:
        raise DataError(f"{source.path}: dataset has no rows")
    return SourceStats(rows, negatives, 0 if source.instruction else rows - instructed)


def read_source(source: Source) -> pl.DataFrame:
    """The rows of one source with columns instruction, query, positive, negative (Utf8).

    Empty or null queries/positives are errors naming the file and row: a silent skip would
    change the mix the user asked for.
    """
    frames = [read_triples(f) for f in _files(source.path)]
    df = pl.concat(frames)
    if df.height == 0:
        raise DataError(f"{source.path}: dataset has no rows")
    if source.instruction is not None:
        df = df.with_columns(pl.lit(source.instruction, dtype=pl.Utf8).alias("instruction"))
    return blank_negatives_to_null(df)


class TripleStore:
    """All sources in memory as Arrow-backed polars frames (compact; fast row gathers)."""

    def __init__(self, sources: list[Source]) -> None:
        if not sources:
            raise DataError("no training data sources given")
        self.sources = list(sources)
        self.frames = [read_source(s) for s in self.sources]

    @property
    def sizes(self) -> list[int]:
        return [df.height for df in self.frames]

    def rows(self, pairs: Sequence[Sequence[int]]) -> list[tuple[str | None, str, str, str | None]]:
        """``(instruction, query, positive, negative)`` of each ``(source, row)``, in order."""
        out: list[tuple[str | None, str, str, str | None] | None] = [None] * len(pairs)
        by_source: dict[int, list[int]] = {}
        for i, (source, _) in enumerate(pairs):
            by_source.setdefault(int(source), []).append(i)
        for source, positions in by_source.items():
            picked = self.frames[source][[int(pairs[i][1]) for i in positions]]
            for i, row in zip(positions, picked.iter_rows()):
                out[i] = row  # type: ignore[assignment]
        return out  # type: ignore[return-value]

    def row(self, source: int, index: int) -> tuple[str | None, str, str, str | None]:
        return self.rows([(source, index)])[0]
