"""TrainConfig from TOML: unknown keys, bad values and bad data fail before a model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from _tiny import toy_triples
from e5x.data import DataError
from e5x.training import ConfigError, TrainConfig, train

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if anything tries to build or load a model."""
    import e5x.model.loading as loading

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the config was checked")

    for name in ("build_tiny_model", "load_base_model", "load_tokenizer", "build_byte_tokenizer"):
        monkeypatch.setattr(loading, name, boom)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.toml"
    p.write_text(text)
    return p


def test_shipped_recipes_parse() -> None:
    tiny = TrainConfig.from_toml(REPO / "configs" / "tiny-cpu.toml")
    tiny.validate()
    assert tiny.tiny_model is not None and tiny.tiny_model.arch == "mistral"
    paper = TrainConfig.from_toml(REPO / "configs" / "e5-mistral.toml")
    assert (paper.batch_size, paper.lr, paper.weight_decay, paper.warmup_steps) == (2048, 1e-4, 0.1, 100)
    assert (paper.lora_r, paper.lora_alpha, paper.lora_dropout, paper.temperature) == (16, 32, 0.1, 0.02)
    assert paper.max_length == 512 and len(paper.lora_target_modules) == 7
    for name in ("tiny-cpu.toml", "e5-mistral.toml"):
        first = (REPO / "configs" / name).read_text().splitlines()[0]
        assert first.startswith("# ") and f"train configs/{name}" in first


def test_unknown_keys_are_errors(tmp_path, no_model_loading) -> None:
    with pytest.raises(ConfigError, match=r"cfg\.toml: learning_rate: unknown key; did you mean 'lr'\?"):
        TrainConfig.from_toml(write(tmp_path, "learning_rate = 1e-4\n"))
    with pytest.raises(ConfigError, match=r"cfg\.toml: sources\[0\]\.weight: unknown key"):
        TrainConfig.from_toml(write(tmp_path, '[[sources]]\npath = "x"\nweight = 2\n'))
    with pytest.raises(ConfigError, match=r"tiny_model\.layers: unknown key; did you mean 'num_hidden_layers'\?"):
        TrainConfig.from_toml(write(tmp_path, "[tiny_model]\nlayers = 2\n"))
    with pytest.raises(ConfigError, match="batch_size: must be an integer >= 1, got '32' \\(str\\)"):
        TrainConfig.from_toml(write(tmp_path, 'batch_size = "32"\n'))
    with pytest.raises(ConfigError, match=r"sources\[0\]\.ratio: must be a number, got 'half'"):
        TrainConfig.from_toml(write(tmp_path, '[[sources]]\npath = "x"\nratio = "half"\n'))
    assert TrainConfig.from_dict({"lr": 1}).lr == 1  # an int is a fine float
    with pytest.raises(ConfigError, match="invalid TOML"):
        TrainConfig.from_toml(write(tmp_path, "batch_size = = 3\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        TrainConfig.from_toml(tmp_path / "missing.toml")


def test_data_errors_before_model_loads(tmp_path, no_model_loading) -> None:
    out = str(tmp_path / "run")
    with pytest.raises(ConfigError, match="no data sources"):
        train(TrainConfig(output_dir=out))
    with pytest.raises(ConfigError, match=r"nope\.parquet: training data file not found"):
        train(TrainConfig(sources=[{"path": str(tmp_path / "nope.parquet")}], output_dir=out))
    toy_triples(2).head(0).write_parquet(tmp_path / "empty.parquet")
    with pytest.raises(ConfigError, match=r"empty\.parquet: dataset has no rows"):
        train({"sources": [{"path": str(tmp_path / "empty.parquet")}], "output_dir": out})
    toy_triples(4).write_parquet(tmp_path / "ok.parquet")
    ok = [{"path": str(tmp_path / "ok.parquet")}]
    with pytest.raises(ConfigError, match="lora_dropout"):
        train(TrainConfig(sources=ok, lora_dropout=1.5, output_dir=out))
    with pytest.raises(ConfigError, match="padding_side"):
        train(TrainConfig(sources=ok, padding_side="middle", output_dir=out))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="larger than the data"):
        train(TrainConfig(sources=ok, batch_size=64, output_dir=out))
    assert isinstance(DataError("x"), ValueError)


def test_relative_source_paths_resolve_beside_the_config(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    toy_triples(4).write_parquet(tmp_path / "d" / "t.parquet")
    cfg = TrainConfig.from_toml(write(tmp_path, '[[sources]]\npath = "d/t.parquet"\nratio = 0.5\n'))
    cfg.validate()
    assert Path(cfg.sources[0].path) == tmp_path / "d" / "t.parquet" and cfg.sources[0].ratio == 0.5


def test_cli_check_reports_errors(tmp_path, capsys) -> None:
    from e5x.cli import main

    assert main(["train", str(write(tmp_path, "bogus = 1\n")), "--check"]) == 2
    assert "cfg.toml: bogus: unknown key" in capsys.readouterr().err
    assert main(["train", str(REPO / "configs" / "tiny-cpu.toml"), "--check"]) == 0


def test_cli_check_prints_the_data_mix(tmp_path, capsys, no_model_loading) -> None:
    import polars as pl

    from e5x.cli import main

    toy_triples(300).write_parquet(tmp_path / "synthetic.parquet")  # a negative and an instruction per row
    pairs = toy_triples(200).with_columns(negative=pl.lit(None, pl.Utf8), instruction=pl.lit(None, pl.Utf8))
    pairs.with_columns(negative=pl.when(pl.int_range(pl.len()) < 50).then(pl.lit("n")).otherwise(None)).write_parquet(
        tmp_path / "pairs.parquet"
    )
    cfg = write(tmp_path, 'batch_size = 64\nepochs = 2.0\n'
                '[[sources]]\npath = "synthetic.parquet"\n'
                '[[sources]]\npath = "pairs.parquet"\nratio = 0.5\n'
                '[[sources]]\npath = "pairs.parquet"\nname = "pairs-instructed"\nratio = 0.1\ninstruction = "Find it"\n')  # fmt: skip
    assert main(["train", str(cfg), "--check"]) == 0
    out = capsys.readouterr().out
    # per epoch: 300 + round(0.5 * 200) + round(0.1 * 200) = 420 examples = 6 steps of 64
    assert "| synthetic | 300 | 1 | 300 | 71.4% | 100.0% | per row |" in out
    assert "| pairs | 200 | 0.5 | 100 | 23.8% | 25.0% | none on 200 rows |" in out
    assert "| pairs-instructed | 200 | 0.1 | 20 | 4.8% | 25.0% | Find it |" in out
    assert "one epoch: 420 examples = 6 steps of 64 queries; this run: 12 steps (2.00 epochs)" in out
    assert "bare queries (pairs)" in out

    too_big = write(tmp_path, 'batch_size = 1024\n[[sources]]\npath = "pairs.parquet"\n')
    assert main(["train", str(too_big), "--check"]) == 2
    assert "batch_size 1024 is larger than the data" in capsys.readouterr().err
