"""The recipe's public training sets: every registry entry's converter on a small fixture in
its source's real layout, preparation through the loopback server (fetch, convert, mine),
and training configs that name datasets (`dataset = ...`, `e5x train --check`)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from _dataserver import DataServer
from _minilm import minilm_path  # noqa: F401 - fixture
from e5x.cli import main
from e5x.data import registry
from e5x.data.public import MiningOptions, convert, is_prepared, prepare, prepared_path
from e5x.data.triples import COLUMNS

REPO = Path(__file__).resolve().parent.parent
PAPER_RATIOS = {"eli5": 0.1, "msmarco_passage": 0.5, "msmarco_document": 0.2, "quora": 0.1, "t2ranking": 0.5}
RECIPE = ["msmarco_passage", "msmarco_document", "nq", "eli5", "triviaqa", "squad", "hotpotqa", "fever", "nli",
          "quora", "miracl", "mrtydi", "dureader", "t2ranking"]  # fmt: skip


def fixture_table(ds: registry.Dataset, n: int, tag: str) -> pl.DataFrame:
    """``n`` rows with the entry's column names (and list columns where the source has them)."""
    lists = ds.name in ("fever", "msmarco_document")  # their positives/negatives are lists of strings
    data: dict[str, list] = {}
    for role, col in ds.columns.items():
        texts = [f"{role} {tag} {i}" for i in range(n)]
        data[col] = [[t, t + " (second)"] for t in texts] if lists and role != "query" else texts
    data["unrelated"] = ["x"] * n  # publishers add columns of their own
    return pl.DataFrame(data)


def fill(ds: registry.Dataset, folder: Path, n: int = 3) -> int:
    """Write every file of ``ds`` under ``folder`` as the fetch lays it out; returns the rows."""
    for k, f in enumerate(ds.files):
        path = folder / f.local_name
        path.parent.mkdir(parents=True, exist_ok=True)
        fixture_table(ds, n, f"{k}").write_parquet(path)
    return n * len(ds.files)


def test_the_registry_holds_the_two_eval_sets_and_the_recipes_13() -> None:
    names = [d.name for d in registry.datasets()]
    assert names[:2] == ["scifact", "stsb"] and sorted(names[2:]) == sorted(RECIPE)
    for ds in registry.datasets("train"):
        assert ds.ratio == PAPER_RATIOS.get(ds.name, 1.0), ds.name
        assert ds.license and ds.homepage and ds.size and ds.files
        for f in ds.files:  # pinned: a full commit id, or a note saying it is not
            assert len(f.revision) == 40 or "not pinned" in ds.note, (ds.name, f.revision)
    assert len(registry.get("nli").instructions) == len(registry.get("quora").instructions) == 2
    assert {d.name for d in registry.datasets("train") if d.mine} == {"eli5", "nq", "squad"}
    assert len(registry.get("msmarco_document").files) == 163  # shards = 163 expanded


@pytest.mark.parametrize("name", RECIPE)
def test_each_recipe_converter_on_its_sources_layout(name: str, tmp_path: Path) -> None:
    ds = registry.get(name)
    rows = fill(ds, tmp_path)
    df = convert(ds, tmp_path, seed=0)
    assert df.columns == list(COLUMNS) and df.height == rows
    assert df["query"].str.starts_with("query ").all() and df["positive"].str.starts_with("positive ").all()
    assert not df["positive"].str.contains("second").any()  # a list column gives its first string
    if "negative" in ds.columns:
        assert df["negative"].str.starts_with("negative ").all()
    else:
        assert df["negative"].null_count() == rows
    assert set(df["instruction"]) <= set(ds.instructions) and set(df["source"]) == {name}


def test_two_instructions_are_drawn_per_row_seeded(tmp_path: Path) -> None:
    ds = registry.get("nli")
    big = tmp_path / ds.files[0].local_name
    big.parent.mkdir(parents=True)
    fixture_table(ds, 400, "a").write_parquet(big)
    a, b = convert(ds, tmp_path, seed=0), convert(ds, tmp_path, seed=0)
    counts = a["instruction"].value_counts()
    assert counts.height == 2 and counts["count"].min() > 150  # both, about half each
    assert a["instruction"].to_list() == b["instruction"].to_list()
    assert convert(ds, tmp_path, seed=1)["instruction"].to_list() != a["instruction"].to_list()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A loopback 'Hub' serving fixture files at the registry's real paths for nli and nq."""
    for var in ("E5X_DATA_MIRROR", "E5X_OFFLINE", "HF_HUB_OFFLINE", "E5X_REGISTRY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("E5X_CACHE_DIR", str(tmp_path / "cache"))
    files = {}
    for name, n in (("nli", 6), ("nq", 12)):
        ds = registry.get(name)
        folder = tmp_path / "src" / name
        fill(ds, folder, n)
        for f in ds.files:
            files["/" + f.mirror_path] = (folder / f.local_name).read_bytes()
    with DataServer(files) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def test_prepare_fetches_converts_and_caches(hub) -> None:
    said: list[str] = []
    path = prepare("nli", echo=said.append)
    assert path == prepared_path("nli") and is_prepared("nli")
    df = pl.read_parquet(path)
    assert df.height == 6 and df["negative"].null_count() == 0
    assert json.loads(path.with_suffix(".json").read_text())["rows"] == 6
    assert any("license" in s for s in said)
    hub.__exit__()  # prepared: no network needed any more
    assert prepare("nli", echo=said.append) == path


def test_prepare_mines_negatives_where_the_paper_did(hub, minilm_path) -> None:
    opts = MiningOptions(model=str(minilm_path), range_min=0, range_max=5, relative_margin=None)
    assert opts.prompts() == ("", "")  # a non-E5 miner gets no prompts...
    assert MiningOptions().prompts() == ("query: ", "passage: ")  # ...E5 miners need theirs
    df = pl.read_parquet(prepare("nq", mine=opts, echo=lambda s: None))
    assert df.height == 12 and df["negative"].null_count() == 0
    assert (df["negative"] != df["positive"]).all()
    info = json.loads(prepared_path("nq").with_suffix(".json").read_text())
    assert info["mined"] and info["mined_rows"] == 12


def test_prepare_refuses_an_eval_set() -> None:
    with pytest.raises(ValueError, match="scifact is an evaluation set"):
        prepare("scifact")


def test_training_config_sources_by_dataset_name(tmp_path, monkeypatch, capsys) -> None:
    from e5x.training.config import ConfigError, TrainConfig

    monkeypatch.setenv("E5X_CACHE_DIR", str(tmp_path / "cache"))
    cfg_path = tmp_path / "mix.toml"
    cfg_path.write_text('batch_size = 4\n[[sources]]\ndataset = "eli5"\n[[sources]]\ndataset = "nli"\nratio = 2.0\n')
    cfg = TrainConfig.from_toml(cfg_path)
    eli5, nli = cfg.sources
    assert (eli5.ratio, nli.ratio) == (0.1, 2.0)  # the registry's unless the config gives one
    assert eli5.path == str(prepared_path("eli5")) and eli5.unprepared
    with pytest.raises(ConfigError, match=r"2 dataset source\(s\) not prepared yet: eli5, nli"):
        cfg.validate()
    assert main(["train", str(cfg_path), "--check"]) == 2
    out, err = capsys.readouterr()
    assert "| eli5 | not prepared | 0.1 |" in out and "Provided a user question" in out
    assert f"e5x data prepare {cfg_path}" in err
    # Once prepared, --check plans the mix with the rows' instructions.
    ds = registry.get("nli")
    fill(ds, tmp_path / "nli-src", 8)
    from e5x.data.triples import write_triples

    write_triples(convert(ds, tmp_path / "nli-src"), prepared_path("nli"))
    assert main(["train", str(cfg_path), "--check"]) == 2  # eli5 still missing
    out, _ = capsys.readouterr()
    assert "| nli | 8 | 2 | 16 | 100.0% | 100.0% |" in out and "the 1 prepared source(s)" in out
    for bad, msg in (('dataset = "nope"', "unknown dataset 'nope'"), ('dataset = "scifact"', "evaluation set"),
                     ('dataset = "nq"\npath = "x.parquet"', "a path or a dataset, not both")):  # fmt: skip
        cfg_path.write_text(f"[[sources]]\n{bad}\n")
        with pytest.raises(ConfigError, match=msg):
            TrainConfig.from_toml(cfg_path)


def test_the_paper_recipe_names_all_13_sets(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("E5X_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["train", str(REPO / "configs" / "e5-mistral.toml"), "--check"]) == 2
    out, err = capsys.readouterr()
    rows = [line for line in out.splitlines() if line.startswith("| ") and "not prepared" in line]
    assert len(rows) == 14 and {r.split(" | ")[0][2:] for r in rows} == set(RECIPE)
    assert "| synthetic | not found |" in out  # the synthetic data comes from e5x synth + e5x clean
    assert "e5x data prepare" in err and "msmarco_passage" in err and "no data at: synthetic" in err
    assert err.count("\n") == 1


def test_cli_data_list_and_errors(tmp_path, monkeypatch, capsys, shared_data) -> None:
    monkeypatch.setenv("E5X_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("E5X_DATA_MIRROR", str(shared_data))
    assert main(["data", "list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 16 and {r["name"]: r["state"] for r in rows}["scifact"] == "fetched (mirror)"
    assert {r["name"]: r["checksum"] for r in rows}["triviaqa"] == "sha256"
    assert main(["data", "list"]) == 0
    table = capsys.readouterr().out
    assert "| eli5 | train |" in table and "(+ mined negatives)" in table
    assert main(["data", "fetch", "stsb", "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(shared_data / "sts" / "stsbenchmark")
    assert main(["data", "fetch", "nope"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["data", "prepare", "eli5", "--miner", "none"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eli5" in err and "E5X_DATA_MIRROR" in err  # one line, no traceback
