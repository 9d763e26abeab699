"""Bad input through the CLI: each case exits with the documented code (e5x.cli's table), says
one line on stderr naming what is wrong, prints no traceback, and leaves existing outputs as
they were."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from e5x.cli import EXIT_FAILED, EXIT_USAGE, main


@pytest.fixture
def files(tmp_path: Path, monkeypatch) -> dict[str, Path]:
    monkeypatch.setenv("E5X_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("E5X_DATA_MIRROR", raising=False)
    pairs = tmp_path / "pairs.parquet"
    pl.DataFrame({"query": ["q"], "positive": ["p"]}).write_parquet(pairs)
    existing = tmp_path / "existing.parquet"
    existing.write_bytes(b"earlier output")
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    no_data = tmp_path / "no-datasets.toml"
    no_data.write_text('[[sources]]\npath = "x.parquet"\n')
    typo = tmp_path / "typo.toml"
    typo.write_text("learning_rate = 1e-4\n")
    bad_quickstart = tmp_path / "bad-quickstart.toml"
    bad_quickstart.write_text("seed = 1\n[eval]\nsts_pears = 10\n")
    bad_clean = tmp_path / "bad-clean.toml"
    bad_clean.write_text('inputs = "runs/synth"\nexamples_per_reason = -1\n')
    empty_folder = tmp_path / "beir-without-qrels"
    empty_folder.mkdir()
    logs = {}
    for name, body in (("empty_log", b""), ("junk_log", b'garbage\n\x00\x01binary\n[1, 2]\n"a string"\n')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "responses.jsonl").write_bytes(body)
        logs[name] = tmp_path / name
    return {"pairs": pairs, "existing": existing, "blocker": blocker, "no_data": no_data, "typo": typo,
            "beir": empty_folder, "missing": tmp_path / "missing.parquet", "bad_clean": bad_clean,
            "bad_quickstart": bad_quickstart, **logs}  # fmt: skip


CASES = [
    # (argv with {placeholders}, exit code, text the message must hold)
    (["convert", "table", "{missing}", "-o", "{existing}"], EXIT_USAGE, "missing.parquet not found"),
    (["convert", "table", "{pairs}", "--query", "nope", "-o", "{existing}"], EXIT_USAGE, "no column for query='nope'"),
    (["convert", "beir", "{beir}", "-o", "{existing}"], EXIT_USAGE, "train.tsv not found"),
    (["convert", "table", "{pairs}", "-o", "{blocker}/out.parquet"], EXIT_FAILED, "a-file"),
    (["train", "{typo}"], EXIT_USAGE, "typo.toml: learning_rate: unknown key; did you mean 'lr'?"),
    (["train", "{missing}.toml"], EXIT_USAGE, "config file not found"),
    (["train", "{no_data}", "--check"], EXIT_USAGE, "x.parquet"),
    (["data", "fetch", "nope"], EXIT_USAGE, "unknown dataset 'nope'"),
    (["data", "prepare", "{no_data}"], EXIT_USAGE, "no [[sources]] names a dataset"),
    (["data", "prepare", "scifact"], EXIT_FAILED, "scifact is an evaluation set"),
    (["data", "fetch", "scifact"], EXIT_FAILED, "E5X_DATA_MIRROR"),
    (["eval", "{pairs}", "{missing}"], EXIT_USAGE, "missing.parquet"),
    (["quickstart", "--config", "{missing}.toml"], EXIT_USAGE, "not found"),
    # Stage configs (e5x.config): validated before any work, the file or "override" and the field named.
    (["eval", "{pairs}", "{missing}", "top_k=5"], EXIT_USAGE, "override: top_k: must be >= 10, got 5 (int)"),
    (["eval", "{pairs}", "{missing}", "--batch-size", "0"], EXIT_USAGE, "override: batch_size: must be >= 1, got 0"),
    (["eval", "{pairs}", "{missing}", "--dtype", "fp8"], EXIT_USAGE, "dtype: must be one of float32|bfloat16|float16"),
    (["eval", "{pairs}"], EXIT_USAGE, "tasks: no tasks"),
    (["clean", "{beir}", "dedup_fields=query"], EXIT_USAGE, "dedup_fields: must be a list of strings, got 'query'"),
    (["clean", "{beir}", "dedup_feilds=[]"], EXIT_USAGE, "dedup_feilds: unknown key; did you mean 'dedup_fields'?"),
    (
        ["clean", "{bad_clean}"],
        EXIT_USAGE,
        "bad-clean.toml: inputs: must be a list of strings, got 'runs/synth' (str); "
        "examples_per_reason: must be >= 0, got -1",
    ),
    (["clean", "{beir}", "--out", "{existing}", "--quality-checks", "bogus"], EXIT_USAGE, "quality_checks: unknown"),
    (["clean"], EXIT_USAGE, "inputs: no inputs"),
    # Nothing usable to clean: an error, and no 0-row triples file in place of a result.
    (["clean", "{empty_log}", "--out", "{existing}"], EXIT_USAGE, "no responses to clean"),
    (["clean", "{junk_log}", "--out", "{existing}"], EXIT_USAGE, "no responses to clean"),
    (["train", "{no_data}", "lr=-1", "--check"], EXIT_USAGE, "override: lr: must be >= 0, got -1 (int)"),
    (["train", "{no_data}", "sources.0.ratio=half"], EXIT_USAGE, "override: sources[0].ratio: must be a number"),
    (["train", "{no_data}", "lora_rr=8"], EXIT_USAGE, "override: lora_rr: unknown key; did you mean 'lora_r'?"),
    (["train", "{no_data}", "--max-steps", "0"], EXIT_USAGE, "override: max_steps: must be >= 1, got 0"),
    (["train"], EXIT_USAGE, "no recipe"),
    # The quickstart's config: checked before any data is fetched or any server started.
    (
        ["quickstart", "{bad_quickstart}"],
        EXIT_USAGE,
        "bad-quickstart.toml: eval.sts_pears: unknown key; did you mean 'sts_pairs'?",
    ),
    (["quickstart", "--config", "{bad_quickstart}"], EXIT_USAGE, "bad-quickstart.toml: eval.sts_pears: unknown key"),
    (
        ["quickstart", "synth.n_exmples=3"],
        EXIT_USAGE,
        "override: synth.n_exmples: unknown key; did you mean 'n_examples'?",
    ),
    (["quickstart", "--max-steps", "0"], EXIT_USAGE, "override: train.max_steps: must be >= 1, got 0 (int)"),
    (["quickstart", "--set", "train.lr=-1"], EXIT_USAGE, "override: train.lr: must be >= 0, got -1 (int)"),
    (["quickstart", "eval.pooling=max"], EXIT_USAGE, "override: eval.pooling: must be one of last_token|mean|cls"),
]


@pytest.mark.parametrize(("argv", "code", "text"), CASES, ids=[" ".join(c[0][:2]) + f" #{i}" for i, c in
                                                               enumerate(CASES)])  # fmt: skip
def test_bad_input_is_one_line_with_the_documented_code(argv, code, text, files, capsys) -> None:
    before = files["existing"].read_bytes()
    got = main([a.format(**files) for a in argv])
    err = capsys.readouterr().err
    assert got == code, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert text in err
    assert files["existing"].read_bytes() == before  # nothing already produced is lost
    if argv[0] == "clean":  # nor a report or chart beside it
        assert sorted(p.name for p in files["existing"].parent.glob("existing*")) == ["existing.parquet"]


def test_a_bug_is_one_line_too(files, monkeypatch, capsys) -> None:
    import e5x.cli.convert

    def broken(args):
        raise AttributeError("'str' object has no attribute 'get'")

    monkeypatch.setattr(e5x.cli.convert, "run", broken)
    assert main(["convert", "table", str(files["pairs"]), "-o", str(files["existing"])]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: AttributeError" in err and "E5X_DEBUG=1" in err


def test_a_closed_pipe_is_not_an_error(files, monkeypatch, capsys) -> None:
    import e5x.cli.data

    def reader_gone(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(e5x.cli.data, "run", reader_gone)
    assert main(["data", "list"]) == 0
    assert capsys.readouterr().err == ""


def test_an_unexpected_error_can_show_its_traceback(files, monkeypatch) -> None:
    monkeypatch.setenv("E5X_DEBUG", "1")
    with pytest.raises(OSError):
        main(["convert", "table", str(files["pairs"]), "-o", f"{files['blocker']}/out.parquet"])
