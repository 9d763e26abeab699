"""Registered training sets as training triples, ready for ``e5x train``.

``prepare("eli5")`` fetches the set (``e5x.data.download``), converts it with the converter
its layout names (``e5x.data.convert``: BEIR folders, STS-B files, tables with named
columns), gives every row the paper's instruction (sets with two, NLI and Quora, get one
of them per row, seeded), mines a hard negative for each row where the paper did and the
set has none (``miner``), and writes ``<cache>/prepared/NAME.parquet``. A
``[[sources]]`` entry with ``dataset = "NAME"`` trains on that file.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from e5x.data.download import cache_dir, fetch
from e5x.data.registry import Dataset, get
from e5x.formats.triples import DataError, write_triples

# E5-family miners embed with these prompts (mE5: "query: " / "passage: ").
DEFAULT_MINER = "intfloat/multilingual-e5-base"
MINER_PROMPTS = {"intfloat/": ("query: ", "passage: ")}


@dataclass(frozen=True)
class MiningOptions:
    """How hard negatives are mined (see ``e5x.data.negatives.mine_hard_negatives``)."""

    model: str = DEFAULT_MINER
    query_prompt: str | None = None  # None: the miner's known prompt ("query: " for E5 models), else none
    passage_prompt: str | None = None
    range_min: int = 10  # skip the closest candidates (likely unlabelled positives)
    range_max: int = 50
    relative_margin: float | None = 0.05  # drop candidates scoring within 5% of the positive
    batch_size: int = 64

    def prompts(self) -> tuple[str, str]:
        known = next((p for prefix, p in MINER_PROMPTS.items() if self.model.startswith(prefix)), ("", ""))
        return (known[0] if self.query_prompt is None else self.query_prompt,
                known[1] if self.passage_prompt is None else self.passage_prompt)  # fmt: skip


def prepared_path(name: str) -> Path:
    return cache_dir() / "prepared" / f"{get(name).name}.parquet"


def is_prepared(name: str) -> bool:
    return prepared_path(name).is_file()


def _read_table_files(folder: Path, ds: Dataset) -> pl.DataFrame:
    frames = []
    for f in ds.files:
        path = folder / f.local_name
        if path.suffix == ".parquet":
            frames.append(pl.read_parquet(path))
        elif path.name.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
            frames.append(pl.read_ndjson(path, infer_schema_length=None))
        else:
            raise DataError(f"{path}: a table dataset's files must be .parquet or .jsonl(.gz)")
    return pl.concat(frames, how="diagonal_relaxed")


def _first_of_lists(df: pl.DataFrame, columns: Iterable[str]) -> pl.DataFrame:
    """List-valued columns (e.g. ``pos: [str, ...]``) reduced to their first string."""
    return df.with_columns(pl.col(c).list.first() for c in columns if isinstance(df.schema[c], pl.List))


def convert(ds: Dataset, folder: Path, *, seed: int = 0) -> pl.DataFrame:
    """The fetched ``folder`` of training set ``ds`` as triples with the paper's instruction(s)."""
    from e5x.data.convert import beir_triples, sts_triples, table_triples

    if ds.layout == "beir":
        df = beir_triples(folder, "train", instruction=ds.instructions[0], source=ds.name, language=ds.language)
    elif ds.layout == "sts":
        df = sts_triples(folder, "train", instruction=ds.instructions[0], source=ds.name, language=ds.language)
    else:
        cols = ds.columns
        table = _first_of_lists(_read_table_files(folder, ds), [c for c in cols.values() if c])
        df, _ = table_triples(table, query=cols["query"], positive=cols["positive"], negative=cols.get("negative"),
                              instruction=ds.instructions[0], source=ds.name, language=ds.language,
                              task_type=ds.task_type, drop_empty=True)  # fmt: skip
    if len(ds.instructions) > 1:  # e.g. NLI: asymmetric and symmetric instruction, one per row
        rng = random.Random(seed)
        df = df.with_columns(instruction=pl.Series([rng.choice(ds.instructions) for _ in range(df.height)],
                                                   dtype=pl.Utf8))  # fmt: skip
    return df


def _mining_corpus(ds: Dataset, folder: Path) -> list[str] | None:
    """The set's own documents beyond its rows' positives (a BEIR corpus), or None."""
    if ds.layout != "beir":
        return None
    from e5x.formats.benchmark import doc_text, read_jsonl_objects

    return [doc_text(obj) for _, obj in read_jsonl_objects(folder / "corpus.jsonl")]


def prepare(
    name: str,
    *,
    mine: MiningOptions | None = MiningOptions(),
    mirror: str | None = None,
    seed: int = 0,
    force: bool = False,
    decontaminate: Sequence[str] = (),
    echo: Callable[[str], None] | None = None,
    progress: bool | None = None,
) -> Path:
    """``prepared_path(name)``, made if needed (see the module docstring). ``mine=None``
    skips mining (rows without a hard negative then train on in-batch negatives only).
    ``decontaminate`` names evaluation sets (registered names, BEIR folders, STS-B files:
    ``e5x.cleaning.decontaminate``) whose test texts are dropped from the prepared rows (the
    overlaps go to ``NAME.overlaps.parquet``)."""
    ds = get(name)
    if ds.kind != "train":
        raise DataError(f"{ds.name} is an evaluation set; only training sets are prepared (e5x data fetch gets it)")
    say = echo or (lambda s: print(s, file=sys.stderr, flush=True))
    dest = prepared_path(ds.name)
    if dest.is_file() and not force:
        info_file = dest.with_suffix(".json")
        done = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
        if set(map(str, decontaminate)) <= set(done.get("decontaminated_against", [])):
            return dest
    folder = fetch(ds.name, mirror=mirror, progress=progress, echo=say)
    df = convert(ds, folder, seed=seed)
    info: dict[str, Any] = {"name": ds.name, "rows": df.height, "source": ds.source, "mined": False}
    if ds.mine and mine is not None:
        from e5x.data.negatives import mine_hard_negatives

        q_prompt, p_prompt = mine.prompts()
        say(f"e5x data: mining hard negatives for {ds.name} ({df.height:,} rows) with {mine.model}")
        df, report = mine_hard_negatives(
            df, mine.model, corpus=_mining_corpus(ds, folder), range_min=mine.range_min, range_max=mine.range_max,
            relative_margin=mine.relative_margin, batch_size=mine.batch_size, seed=seed, query_prompt=q_prompt,
            passage_prompt=p_prompt, show_progress=bool(progress),
        )  # fmt: skip
        info.update(mined=True, miner=mine.model, mined_rows=report.mined, prompts=[q_prompt, p_prompt])
    if decontaminate:
        from e5x.cleaning.decontaminate import decontaminate as drop_overlaps
        from e5x.data.download import resolve

        df, overlaps = drop_overlaps(df, [resolve(spec) for spec in decontaminate])
        overlaps.write_parquet(dest.with_suffix(".overlaps.parquet"))
        info.update(decontaminated_against=list(map(str, decontaminate)), overlapping_rows=overlaps["row"].n_unique(),
                    rows=df.height)  # fmt: skip
        say(f"e5x data: {ds.name}: dropped {overlaps['row'].n_unique()} rows found in {', '.join(decontaminate)}")
    write_triples(df, dest)
    dest.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    say(f"e5x data: prepared {ds.name}: {df.height:,} triples -> {dest}")
    return dest
