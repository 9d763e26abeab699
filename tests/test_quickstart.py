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

from e5x.config import ConfigError, to_dict
from e5x.quickstart import (
    DEFAULTS,
    QuickstartConfig,
    load_config,
    prepare_eval_data,
    prepare_real_training_data,
    real_data,
)
from e5x.synth.local_server import llama_cpp_available

REPO = Path(__file__).resolve().parent.parent


def test_configs_quickstart_toml_equals_the_embedded_defaults():
    data = tomllib.loads((REPO / "configs" / "quickstart.toml").read_text())
    assert load_config(REPO / "configs" / "quickstart.toml") == QuickstartConfig()
    assert data.keys() == DEFAULTS.keys() == {f for f in QuickstartConfig.__dataclass_fields__}
    assert data["synth"] == DEFAULTS["synth"] and data["train"] == DEFAULTS["train"]  # nothing filled in
    assert DEFAULTS == to_dict(QuickstartConfig())


def test_full_recipe_config_loads_and_names_the_paper_settings():
    cfg = load_config(REPO / "configs" / "quickstart-e5-mistral.toml")
    t = cfg.train
    assert t["model"] == "mistralai/Mistral-7B-v0.1" and t["batch_size"] == 2048
    assert (t["lr"], t["warmup_steps"], t["max_length"]) == (1e-4, 100, 512)
    assert cfg.eval.sts_pairs == cfg.eval.scifact_corpus == 0  # the whole test sets
    assert cfg.llm.base_url == "https://api.openai.com/v1" and cfg.llm.n_ctx == 4096  # a default kept
    tc = cfg.train_config(t["model"], [])  # every [train] key is a TrainConfig field
    assert (tc.weight_decay, tc.epochs, tc.seed, tc.output_dir) == (0.1, 1.0, 0, "runs/e5-mistral-quickstart/train")
    sc = cfg.synth_config()
    assert sc.max_cost_usd == 200.0 and sc.examples.models == {"gpt-4o": 0.75, "gpt-4o-mini": 0.25}
    assert sc.task_weights == DEFAULTS["synth"]["task_weights"]  # not in the file: the quickstart's


def test_unknown_keys_are_errors_that_name_the_file(tmp_path):
    bad = tmp_path / "qs.toml"
    bad.write_text("[eval]\nsts_pears = 10\n")
    with pytest.raises(ConfigError, match=r"qs\.toml: eval\.sts_pears: unknown key; did you mean 'sts_pairs'\?$"):
        load_config(bad)
    with pytest.raises(ConfigError, match="^override: nope: unknown key; known keys: out_dir, seed"):
        load_config(None, {"nope": 1})
    # [synth] and [train] keys are SynthConfig's and TrainConfig's, named under their table.
    bad.write_text("[train]\nlrr = 1\nbatch_size = 0\n")
    with pytest.raises(ConfigError, match=r"qs\.toml: train\.lrr: unknown key; did you mean 'lr'\?; "
                                          r"train\.batch_size: must be >= 1, got 0 \(int\)$"):  # fmt: skip
        load_config(bad)
    with pytest.raises(ConfigError, match=r"^override: synth\.n_exmples: unknown key; did you mean 'n_examples'"):
        load_config(None, ["synth.n_exmples=3"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["eval.sts_pairs=-1"], "override: eval.sts_pairs: must be >= 0, got -1 (int)"),
        (['eval.sts_pairs="10"'], "override: eval.sts_pairs: must be an integer >= 0, got '10' (str)"),
        (["llm.startup_timeout=0"], "override: llm.startup_timeout: must be > 0, got 0 (int)"),
        (["eval.pooling=max"], "override: eval.pooling: must be one of last_token|mean|cls, got 'max'"),
        (["synth.concurrency=0"], "override: synth.concurrency: must be >= 1, got 0 (int)"),
        (["train.precision=fp8"], "override: train.precision: must be one of auto|bf16|fp32, got 'fp8' (str)"),
        (["evl.sts_pairs=1"], "override: evl: unknown key; did you mean 'eval'?"),
        ({"real_data": {"sts_min_score": 6}}, "override: real_data.sts_min_score: must be <= 5, got 6 (int)"),
        ({"llm": "x"}, "override: llm: must be a table, got 'x' (str)"),
    ],
)
def test_bad_values_are_one_line_naming_the_field(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert str(e.value) == message


def test_a_dict_a_file_and_overrides_lay_tables_over_the_defaults(tmp_path):
    # A [synth] or [train] table changes the keys it gives; weight tables it gives replace.
    given = {"synth": {"task_weights": {"sts": 1.0}, "examples": {"max_tokens": 120}, "brainstorm_requests": {}},
             "train": {"lr": 2e-4}, "eval": {"sts_pairs": 5}}  # fmt: skip
    cfg = load_config(given)
    assert cfg.synth["task_weights"] == {"sts": 1.0} and cfg.synth["brainstorm_requests"] == {}
    assert cfg.synth["examples"] == {"max_tokens": 120, "response_format": "json_schema"}
    assert cfg.synth["n_examples"] == 12 and cfg.train["batch_size"] == 16 and cfg.train["lr"] == 2e-4
    assert cfg.eval.sts_pairs == 5 and cfg.eval.scifact_queries == 50
    # The same as nested overrides of the defaults, and through a file.
    assert load_config(None, given) == cfg
    toml = tmp_path / "qs.toml"
    toml.write_text('[synth]\nbrainstorm_requests = {}\ntask_weights = { sts = 1.0 }\nexamples = { max_tokens = 120 }\n'
                    "[train]\nlr = 2e-4\n[eval]\nsts_pairs = 5\n")  # fmt: skip
    assert load_config(toml) == cfg
    # key.sub=value words: one key each; a weight changed in the default table keeps the others.
    words = load_config(toml, ["synth.task_weights.bitext=2", "train.lr=1e-3", "seed=3", "llm.model=smol"])
    assert words.synth["task_weights"] == {"sts": 1.0, "bitext": 2} and words.train["lr"] == 1e-3
    assert words.seed == 3 and words.llm.model == "smol" and words.train["batch_size"] == 16
    assert load_config(None, ["synth.task_weights.sts=2"]).synth["task_weights"]["long_long"] == 1.0
    # A config object is taken as it is; the seed reaches synth and train unless they set one.
    assert load_config(words) == words
    assert words.synth_config().seed == 3 and words.train_config("m", []).seed == 3
    assert load_config(None, {"seed": 3, "train": {"seed": 7}}).train_config("m", []).seed == 7


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


def test_cli_options_become_config_overrides(tmp_path):
    import argparse

    from e5x.cli import quickstart as cli

    p = argparse.ArgumentParser()
    cli.configure(p)
    args = p.parse_args(["--out", "o", "--max-steps", "5", "--set", "train.lr=2e-4", "eval.sts_pairs=0",
                         "--set", "llm.model=smol", "--model", "m", "--n-examples", "3", "--base-url", "http://h/v1"])  # fmt: skip
    config, over = cli.overrides_from_args(args)
    assert config is None
    assert over == ["out_dir=o", "llm.base_url=http://h/v1", "synth.n_examples=3", "train.max_steps=5",
                    "train.model=m", "eval.sts_pairs=0", "train.lr=2e-4", "llm.model=smol"]  # fmt: skip
    cfg = load_config(config, over)
    assert (cfg.out_dir, cfg.train["max_steps"], cfg.train["lr"], cfg.train["model"]) == ("o", 5, 2e-4, "m")
    assert cfg.eval.sts_pairs == 0 and cfg.llm.model == "smol" and cfg.synth["n_examples"] == 3
    assert cfg.train["batch_size"] == DEFAULTS["train"]["batch_size"]
    # A config file first (or --config), then words; the words win.
    toml = tmp_path / "qs.toml"
    toml.write_text("[train]\nmax_steps = 9\nlr = 1e-3\n")
    for argv in ([str(toml), "train.lr=2e-4"], ["--config", str(toml), "train.lr=2e-4"]):
        config, over = cli.overrides_from_args(p.parse_args(argv))
        cfg = load_config(config, over)
        assert config == str(toml) and (cfg.train["max_steps"], cfg.train["lr"]) == (9, 2e-4)
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
