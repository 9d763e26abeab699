"""The quickstart main job: its config, its data preparation, and one tiny real run.

The end-to-end test runs every stage for real (llama.cpp server with SmolLM2-135M-Instruct,
e5x synth, e5x clean, SmolLM2-135M converted from the same GGUF, e5x train, e5x evaluate
on real STS-B and SciFact files) at a size that fits the test budget: a few requests,
2 training steps, small seeded evaluation subsets. Quality numbers come from
benches/quality.py, not from here.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest

from e5x.quickstart import DEFAULTS, load_config, prepare_eval_data, prepare_real_training_data, real_data
from e5x.synth.local_server import llama_cpp_available

REPO = Path(__file__).resolve().parent.parent


def test_configs_quickstart_toml_equals_the_embedded_defaults():
    data = tomllib.loads((REPO / "configs" / "quickstart.toml").read_text())
    assert load_config(REPO / "configs" / "quickstart.toml") == DEFAULTS
    assert data.keys() == DEFAULTS.keys()


def test_full_recipe_config_loads_and_names_the_paper_settings():
    cfg = load_config(REPO / "configs" / "quickstart-e5-mistral.toml")
    t = cfg["train"]
    assert t["model"] == "mistralai/Mistral-7B-v0.1" and t["batch_size"] == 2048
    assert (t["lr"], t["warmup_steps"], t["max_length"]) == (1e-4, 100, 512)
    assert cfg["eval"]["sts_pairs"] == cfg["eval"]["scifact_corpus"] == 0  # the whole test sets
    from e5x.training import TrainConfig

    TrainConfig.from_dict({**t, "output_dir": "x"})  # every [train] key is a TrainConfig field


def test_unknown_keys_are_errors_that_name_the_file(tmp_path):
    bad = tmp_path / "qs.toml"
    bad.write_text("[eval]\nsts_pears = 10\n")
    with pytest.raises(ValueError, match=r"qs\.toml: .*unknown key eval\.'sts_pears'"):
        load_config(bad)
    with pytest.raises(ValueError, match="unknown key 'nope'"):
        load_config(None, {"nope": 1})


@pytest.fixture
def real(shared_data, tmp_path, monkeypatch):
    """SciFact and STS-B through the dataset registry, with the shared data as the mirror."""
    monkeypatch.setenv("E5X_CACHE_DIR", str(tmp_path / "cache"))
    return real_data(str(shared_data))


def test_real_training_pairs_and_eval_subsets(shared_data, real, tmp_path):
    import polars as pl

    assert real == {"scifact": shared_data / "scifact", "stsb": shared_data / "sts" / "stsbenchmark"}
    paths = prepare_real_training_data(real, tmp_path, DEFAULTS["real_data"], seed=0)
    sts = pl.read_parquet(paths["stsb-train"])
    sf = pl.read_parquet(paths["scifact-train"])
    # Every STS-B train pair scored >= 4 (counted independently here), every SciFact train qrel.
    n_high = sum(
        1 for line in (shared_data / "sts/stsbenchmark/sts-train.csv").read_text().splitlines()
        if len(p := line.split("\t")) >= 7 and float(p[4]) >= 4.0
    )  # fmt: skip
    assert sts.height == n_high and sf.height == 919
    assert set(sts["instruction"]) == {"Retrieve semantically similar text."}
    assert sf["positive"].str.len_chars().min() > 100 and sf["negative"].null_count() == 919

    tasks, sizes = prepare_eval_data(real, tmp_path / "eval", DEFAULTS["eval"], seed=0)
    assert sizes["STSBenchmark"] == {"pairs": DEFAULTS["eval"]["sts_pairs"]}
    assert sizes["SciFact"]["queries"] == DEFAULTS["eval"]["scifact_queries"]
    assert sizes["SciFact"]["corpus"] == DEFAULTS["eval"]["scifact_corpus"]
    qrels = (tmp_path / "eval/SciFact/qrels/test.tsv").read_text().splitlines()[1:]
    corpus_ids = {json.loads(ln)["_id"] for ln in (tmp_path / "eval/SciFact/corpus.jsonl").read_text().splitlines()}
    assert all(line.split("\t")[1] in corpus_ids for line in qrels)  # every relevant abstract kept
    again, _ = prepare_eval_data(real, tmp_path / "eval2", DEFAULTS["eval"], seed=0)
    assert (tmp_path / "eval/SciFact/queries.jsonl").read_text() == (
        tmp_path / "eval2/SciFact/queries.jsonl"
    ).read_text()


@pytest.mark.slow
@pytest.mark.skipif(not llama_cpp_available()[0], reason=f"real LLM server unavailable: {llama_cpp_available()[1]}")
def test_quickstart_end_to_end_tiny(shared_data, tmp_path, monkeypatch):
    from e5x.model.embedder import Embedder
    from e5x.quickstart import format_result, quickstart

    # Nothing beside the clone is searched: the real data comes through the mirror variable.
    monkeypatch.setenv("E5X_DATA_MIRROR", str(shared_data))
    monkeypatch.setenv("E5X_CACHE_DIR", str(tmp_path / "cache"))
    over = {
        "out_dir": str(tmp_path / "qs"),
        "synth": {  # symmetric types only: 2 requests, no brainstorm
            "n_examples": 2,
            "task_weights": {"sts": 1.0, "bitext": 1.0},
            "brainstorm_requests": {},
            "examples": {"max_tokens": 120},
        },
        "real_data": {"sts_max_pairs": 32, "scifact_max_pairs": 32},
        "train": {"max_steps": 2, "batch_size": 2, "max_length": 32, "progress": False},
        "eval": {"sts_pairs": 16, "scifact_queries": 4, "scifact_corpus": 12, "max_length": 32},
    }
    lines: list[str] = []
    res = quickstart(overrides=over, echo=lines.append)
    out = tmp_path / "qs"
    assert (out / "llm-server.log").read_text().strip()  # the server ran and logged
    assert (out / "synth" / "responses.jsonl").is_file() and (out / "data" / "synthetic.report.json").is_file()
    assert res.train_rows["stsb-train"] == 32 and res.train_rows["scifact-train"] == 32
    keys = {"STSBenchmark (cosine_spearman)", "SciFact (ndcg_at_10)"}
    assert set(res.before) == set(res.after) == keys
    assert all(math.isfinite(v) for v in [*res.before.values(), *res.after.values()])
    summary = json.loads((out / "quickstart.json").read_text())
    assert len(summary["train_losses"]) == 2 and all(math.isfinite(x) for x in summary["train_losses"])
    assert summary["eval_sizes"]["STSBenchmark"] == {"pairs": 16}
    assert summary["eval_sizes"]["SciFact"]["queries"] == 4 and summary["eval_sizes"]["SciFact"]["corpus"] == 12
    # The saved model loads and embeds; the table shows both numbers.
    emb = Embedder.from_pretrained(res.model_dir, show_progress=False)
    v = emb.encode_documents(["a tiny check"])
    assert v.shape == (1, 576) and abs(float((v**2).sum()) - 1) < 1e-4
    table = format_result(res)
    assert "STSBenchmark (cosine_spearman)" in table and f"{res.before['SciFact (ndcg_at_10)']:.2f}" in table
    assert any("synthetic examples kept" in s for s in lines)
    assert any(s.startswith("e5x quickstart: quality checks: ") for s in lines)
    assert set(summary["clean_report"]) >= {"by_reason", "by_task_type_reason", "quality_checks"}


def test_clean_summary_says_why_and_when_nothing_was_kept():
    from e5x.quickstart import clean_summary

    report = {"responses": 3, "by_reason": {"prompt_echo": 2, "wrong_language": 1},
              "quality_checks": {"prompt_echo": 8.0, "wrong_language": 0.5},
              "examples": {"prompt_echo": [{"message": "user_query repeats  8 words\nof the prompt"}],
                           "wrong_language": [{"message": "S2 reads as French, asked for German"}]}}  # fmt: skip
    lines = clean_summary(report, 0)
    assert lines[0] == "0 of 3 synthetic examples kept (rejected by reason: {'prompt_echo': 2, 'wrong_language': 1})"
    assert lines[1] == "quality checks: prompt_echo=8, wrong_language=0.5"
    assert "  prompt_echo, e.g.: user_query repeats 8 words of the prompt" in lines
    assert "nothing usable" in lines[-1] and "--base-url" in lines[-1]
    assert not any("nothing usable" in s for s in clean_summary({**report, "responses": 4}, 1))


def test_cli_options_become_config_overrides():
    import argparse

    from e5x.cli import quickstart as cli

    p = argparse.ArgumentParser()
    cli.configure(p)
    args = p.parse_args(["--out", "o", "--max-steps", "5", "--set", "train.lr=2e-4",
                         "--set", "eval.sts_pairs=0", "--set", "llm.model=smol"])  # fmt: skip
    over = cli.overrides_from_args(args)
    assert over == {"out_dir": "o", "train": {"max_steps": 5, "lr": 2e-4}, "eval": {"sts_pairs": 0},
                    "llm": {"model": "smol"}}  # fmt: skip
    cfg = load_config(None, over)
    assert cfg["train"]["lr"] == 2e-4 and cfg["train"]["batch_size"] == DEFAULTS["train"]["batch_size"]
    bad = p.parse_args(["--set", "eval.sts_pears=1"])
    assert cli.run(bad) == 2  # unknown key: a clear error, exit status 2


def test_quickstart_without_data_or_network_fails_in_seconds_naming_what_to_do(tmp_path, monkeypatch, capsys):
    import time

    from e5x.cli import main

    monkeypatch.delenv("E5X_DATA_MIRROR", raising=False)
    monkeypatch.setenv("E5X_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network, no mirror
    monkeypatch.chdir(tmp_path)
    t = time.monotonic()
    assert main(["quickstart", "--out", str(tmp_path / "qs")]) == 2
    assert time.monotonic() - t < 10
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dataset 'scifact' could not be fetched" in err
    assert "scifact.zip" in err and "E5X_DATA_MIRROR" in err and "network was not tried" in err
