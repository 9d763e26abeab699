"""Decontamination against real SciFact and STS-B test texts: planted overlaps (with case and
spacing changed) are found exactly, and nothing else is."""

from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl
import pytest

from e5x.cli import main
from e5x.cleaning.decontaminate import decontaminate, eval_texts, find_overlaps


@pytest.fixture
def evals(shared_data: Path):
    return [eval_texts(shared_data / "scifact"), eval_texts(shared_data / "sts" / "stsbenchmark")]


def _mangle(text: str) -> str:
    """The same text as far as the paper's matching goes: other case, other spacing."""
    return "  " + text.upper().replace(" ", " \t ") + "\n"


def test_eval_texts_of_each_layout(shared_data: Path, tmp_path: Path) -> None:
    sf = eval_texts(shared_data / "scifact")
    qrels = [ln.split("\t") for ln in (shared_data / "scifact/qrels/test.tsv").read_text().splitlines()[1:]]
    assert len(sf.texts) == len({q for q, *_ in qrels}) + len({d for _, d, _ in qrels})  # test queries + judged docs
    assert sf.where[0].startswith("query ") and sf.where[-1].startswith("document ")
    sts = eval_texts(shared_data / "sts" / "stsbenchmark")
    assert len(sts.texts) == 2 * 1379 and sts.name == "stsbenchmark"
    (tmp_path / "mine.txt").write_text("first text\n\nsecond text\n")
    assert eval_texts(tmp_path / "mine.txt").texts == ["first text", "second text"]
    with pytest.raises(FileNotFoundError, match="nope: no such file or folder"):
        eval_texts(tmp_path / "nope")


def test_planted_overlaps_are_found_exactly(evals, shared_data: Path) -> None:
    rng = random.Random(0)
    sf, sts = evals
    n = 2000
    triples = pl.DataFrame({
        "query": [f"a training query {i} about topic {rng.random()}" for i in range(n)],
        "positive": [f"a training document {i} with words {rng.random()}" for i in range(n)],
        "negative": [None if i % 3 else f"a negative {i}" for i in range(n)],
    })  # fmt: skip
    planted = {  # (row, column) -> (eval set, where)
        (5, "query"): (sts.name, 17), (900, "positive"): (sf.name, 0), (1999, "negative"): (sf.name, len(sf.texts) - 1),
        (42, "query"): (sf.name, 3), (42, "positive"): (sts.name, 2000),
    }  # fmt: skip
    for (row, col), (name, i) in planted.items():
        src = sf if name == sf.name else sts
        triples[row, col] = _mangle(src.texts[i])
    triples[7, "query"] = "a training query 7 about topic"  # near but not equal to anything
    overlaps = find_overlaps(triples, evals)
    got = {(r["row"], r["column"]): (r["eval_set"], r["eval_where"]) for r in overlaps.iter_rows(named=True)}
    want = {}
    for (row, col), (name, i) in planted.items():
        src = sf if name == sf.name else sts
        want[(row, col)] = (name, src.where[i])
    # An evaluation text repeated inside the set is reported at its first occurrence.
    for key, (name, where) in list(want.items()):
        src = sf if name == sf.name else sts
        first = src.texts.index(src.texts[src.where.index(where)])
        want[key] = (name, src.where[first])
    assert got == want
    kept, _ = decontaminate(triples, [shared_data / "scifact", shared_data / "sts" / "stsbenchmark"])
    assert kept.height == n - 4 and kept.columns == triples.columns  # rows 5, 42, 900, 1999 dropped


def test_cli_and_prepare_report_overlaps(shared_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("E5X_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("E5X_DATA_MIRROR", str(shared_data))
    sts = eval_texts(shared_data / "sts" / "stsbenchmark")
    src = tmp_path / "t.parquet"
    pl.DataFrame({"query": ["fine", sts.texts[10].lower()], "positive": ["x", "y"]}).write_parquet(src)
    out = tmp_path / "clean.parquet"
    assert main(["decontaminate", str(src), "--against", "stsb", "scifact", "-o", str(out)]) == 0
    assert "1 of 2 rows overlap evaluation texts (stsbenchmark 1); dropped" in capsys.readouterr().out
    assert pl.read_parquet(out)["query"].to_list() == ["fine"]
    report = pl.read_parquet(out.with_suffix(".overlaps.parquet"))
    assert report.select("row", "column", "eval_set").row(0) == (1, "query", "stsbenchmark")
    assert main(["decontaminate", str(src), "--against", "stsb", "--keep", "--report", str(tmp_path / "r.parquet"),
                 "-o", str(tmp_path / "same.parquet")]) == 0  # fmt: skip
    assert pl.read_parquet(tmp_path / "same.parquet").height == 2
    assert main(["decontaminate", str(src), "--against", "nope", "-o", str(out)]) == 2
    assert "nope: no such file or folder, and not a registered dataset" in capsys.readouterr().err


def test_prepare_drops_overlaps_and_records_them(shared_data: Path, tmp_path: Path, monkeypatch) -> None:
    from _dataserver import DataServer
    from e5x.data import registry
    from e5x.data.public import prepare, prepared_path

    for var in ("E5X_OFFLINE", "HF_HUB_OFFLINE", "E5X_REGISTRY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("E5X_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("E5X_DATA_MIRROR", str(shared_data))
    sts = eval_texts(shared_data / "sts" / "stsbenchmark")
    ds = registry.get("nli")
    table = pl.DataFrame({"anchor": ["a premise", sts.texts[0]], "positive": ["p1", "p2"], "negative": ["n1", "n2"]})
    path = tmp_path / "nli.parquet"
    table.write_parquet(path)
    with DataServer({"/" + ds.files[0].mirror_path: path.read_bytes()}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("E5X_DATA_MIRROR", "")
        plain = pl.read_parquet(prepare("nli", echo=lambda s: None))
        clean = pl.read_parquet(prepare("nli", decontaminate=[str(shared_data / "sts" / "stsbenchmark")],
                                        echo=lambda s: None))  # fmt: skip
    assert plain.height == 2 and clean["query"].to_list() == ["a premise"]
    info = json.loads(prepared_path("nli").with_suffix(".json").read_text())
    assert info["overlapping_rows"] == 1 and info["rows"] == 1
