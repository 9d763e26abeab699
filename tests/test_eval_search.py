"""Chunked exact search equals brute force; metrics agree with hand values and with ranx;
``e5x.evaluate`` end to end on a tiny decoder (instructions, table, JSON, CLI)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from e5x.eval import EvalConfig, evaluate
from e5x.tasks.instructions import TASK_INSTRUCTIONS, instruction_for
from e5x.eval.retrieval import exact_search, retrieval_metrics
from e5x.eval.sts import sts_metrics


@pytest.mark.parametrize("n_docs, chunk, k", [(1, 1, 10), (37, 5, 10), (37, 100, 10), (64, 7, 50), (20, 3, 30)])
def test_chunked_search_equals_brute_force(n_docs, chunk, k):
    g = torch.Generator().manual_seed(n_docs * 31 + chunk)
    q = torch.randn(9, 16, generator=g)
    d = torch.randn(n_docs, 16, generator=g)
    scores, index = exact_search(q, lambda a, b: d[a:b], n_docs, top_k=k, corpus_chunk_size=chunk, query_batch_size=4)
    full = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(d, dim=-1).T
    want_s, want_i = torch.topk(full, min(k, n_docs), dim=1)
    torch.testing.assert_close(scores, want_s)
    assert torch.equal(index, want_i)


def test_empty_corpus_search_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        exact_search(torch.randn(2, 4), lambda a, b: None, 0)


def test_metrics_hand_values():
    qrels = {"a": {"d1": 1, "d2": 1}, "b": {"d5": 1}, "c": {"d9": 1}}
    run = {
        "a": {"d1": 0.9, "x": 0.8, "d2": 0.7},  # relevant at ranks 1 and 3
        "b": {f"x{i}": 1.0 - i / 100 for i in range(10)} | {"d5": 0.5},  # relevant at rank 11
        # "c" returns nothing
    }
    mean, per_q = retrieval_metrics(qrels, run)
    ndcg_a = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert per_q["a"]["ndcg_at_10"] == pytest.approx(100 * ndcg_a)
    assert per_q["a"]["mrr_at_10"] == pytest.approx(100.0)
    assert per_q["b"]["mrr_at_10"] == 0.0  # beyond the cut of 10
    assert per_q["b"]["recall_at_100"] == 100.0 and per_q["b"]["recall_at_10"] == 0.0
    assert per_q["c"] == {k: 0.0 for k in per_q["c"]}
    assert mean["ndcg_at_10"] == pytest.approx(100 * ndcg_a / 3)


def test_metrics_agree_with_ranx():
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(0)
    docs = [f"d{i}" for i in range(300)]
    qrels, run = {}, {}
    for q in range(40):
        rel = rng.choice(300, size=rng.integers(1, 4), replace=False)
        qrels[f"q{q}"] = {docs[i]: 1 for i in rel}
        scores = rng.random(300)
        scores[rel] += rng.random() * 0.5
        top = np.argsort(-scores)[:100]
        run[f"q{q}"] = {docs[i]: float(scores[i]) for i in top}
    mean, _ = retrieval_metrics(qrels, run)
    ref = ranx.evaluate(ranx.Qrels(qrels), ranx.Run(run), ["ndcg@10", "recall@100", "mrr@10", "recall@10"])
    assert mean["ndcg_at_10"] == pytest.approx(100 * ref["ndcg@10"], abs=1e-6)
    assert mean["recall_at_100"] == pytest.approx(100 * ref["recall@100"], abs=1e-6)
    assert mean["mrr_at_10"] == pytest.approx(100 * ref["mrr@10"], abs=1e-6)
    assert mean["recall_at_10"] == pytest.approx(100 * ref["recall@10"], abs=1e-6)


def test_sts_metrics_agree_with_scipy():
    from scipy.stats import pearsonr, spearmanr

    pred, gold = np.array([0.1, 0.4, 0.35, 0.8, 0.8]), [1.0, 2.0, 3.0, 4.0, 4.0]
    m = sts_metrics(pred, gold)
    assert m["cosine_spearman"] == pytest.approx(100 * spearmanr(pred, gold).statistic)
    assert m["cosine_pearson"] == pytest.approx(100 * pearsonr(pred, gold).statistic)


def test_instruction_table():
    assert instruction_for("scifact", "Retrieval") == TASK_INSTRUCTIONS["SciFact"]
    assert instruction_for("STSBenchmark", "STS") == "Retrieve semantically similar text."
    assert instruction_for("CQADupstackUnixRetrieval", "Retrieval").startswith("Given a question, retrieve detailed")
    assert instruction_for("my-folder", "Retrieval").startswith("Given a query")
    assert instruction_for("SciFact", "Retrieval", {"SciFact": "custom"}) == "custom"
    with pytest.raises(KeyError, match="no instruction"):
        instruction_for("Unknown", "Clustering")


# --------------------------------------------------------- end to end on a tiny decoder
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from e5x.model.config import EmbeddingSpec
    from e5x.model.loading import TinyModelConfig, build_byte_tokenizer, build_tiny_model

    tok = build_byte_tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=32, intermediate_size=64, seed=1), len(tok))
    d = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    EmbeddingSpec(max_length=64).save(d)
    return d


@pytest.fixture(scope="module")
def small_beir(shared_data, tmp_path_factory) -> Path:
    """SciFact cut down: 20 test claims, their documents and 80 others."""
    src = shared_data / "scifact"
    lines = (src / "qrels" / "test.tsv").read_text().splitlines()
    qrels = [ln.split("\t") for ln in lines[1:]]
    qids = list(dict.fromkeys(q for q, _, _ in qrels))[:20]
    keep = [r for r in qrels if r[0] in qids]
    rel_docs = {d for _, d, _ in keep}
    corpus = [json.loads(x) for x in (src / "corpus.jsonl").read_text().splitlines()]
    docs = [c for c in corpus if c["_id"] in rel_docs] + [c for c in corpus if c["_id"] not in rel_docs][:80]
    queries = [json.loads(x) for x in (src / "queries.jsonl").read_text().splitlines()]
    d = tmp_path_factory.mktemp("beir") / "scifact"
    (d / "qrels").mkdir(parents=True)
    (d / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in docs))
    (d / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries if q["_id"] in qids + ["0"]))
    (d / "qrels" / "test.tsv").write_text(lines[0] + "\n" + "".join("\t".join(r) + "\n" for r in keep))
    return d


def test_evaluate_end_to_end_with_instructions(tiny_dir, small_beir, shared_data, tmp_path):
    from e5x.model.embedder import Embedder

    sts_file = tmp_path / "sts" / "sts-test.csv"
    sts_file.parent.mkdir()
    sts_file.write_text(
        "".join((shared_data / "sts" / "stsbenchmark" / "sts-test.csv").read_text().splitlines(True)[:40])
    )
    out = tmp_path / "res" / "results.json"
    cfg = EvalConfig(
        model=str(tiny_dir),
        tasks=[str(small_beir), f"STSBenchmark={sts_file}"],
        output=str(out),
        show_progress=False,
        corpus_chunk_size=17,
    )
    report = evaluate(cfg)
    sf, sts = report["SciFact"], report["STSBenchmark"]
    assert sf.instruction == TASK_INSTRUCTIONS["SciFact"]
    assert sts.instruction == "Retrieve semantically similar text."
    assert sf.counts["queries"] == 20 and sf.counts["skipped_queries"] == 1 and sf.counts["documents"] >= 100
    assert 0 <= sf.score <= 100 and -100 <= sts.score <= 100 and sts.counts["pairs"] == 40
    saved = json.loads(out.read_text())
    assert [r["task"] for r in saved["results"]] == ["SciFact", "STSBenchmark"]
    assert saved["results"][0]["metrics"]["ndcg_at_10"] == pytest.approx(sf.score)
    table = report.table()
    assert "SciFact" in table and "ndcg_at_10" in table and f"{sf.score:.2f}" in table

    # same numbers from a ready Embedder, with a corpus chunk larger than the corpus
    emb = Embedder.from_pretrained(tiny_dir, show_progress=False)
    again = evaluate(tasks=[str(small_beir)], embedder=emb, show_progress=False)
    assert again["SciFact"].metrics == pytest.approx(sf.metrics, abs=1e-4)
    bare = evaluate(tasks=[str(small_beir)], embedder=emb, use_instructions=False, show_progress=False)
    assert bare["SciFact"].instruction is None
    assert bare["SciFact"].metrics != pytest.approx(sf.metrics, abs=1e-4)


def test_cli_eval_and_encode(tiny_dir, small_beir, tmp_path, capsys):
    from e5x.cli import main

    out = tmp_path / "r.json"
    assert main(["eval", str(tiny_dir), str(small_beir), "-o", str(out), "-q", "--instruction", "SciFact=Find it"]) == 0
    printed = capsys.readouterr().out
    assert "SciFact" in printed and "ndcg_at_10" in printed
    assert json.loads(out.read_text())["results"][0]["instruction"] == "Find it"

    (tmp_path / "texts.txt").write_text("first text\nsecond text\n")
    assert main(["encode", str(tiny_dir), str(tmp_path / "texts.txt"), "-o", str(tmp_path / "e.npy"), "-q"]) == 0
    arr = np.load(tmp_path / "e.npy")
    assert arr.shape == (2, 32)
    from e5x.model.embedder import Embedder

    np.testing.assert_allclose(
        arr, Embedder.from_pretrained(tiny_dir, show_progress=False).encode(["first text", "second text"]), atol=1e-6
    )
    (tmp_path / "q.jsonl").write_text('{"text": "a"}\n{"txt": "b"}\n')
    assert (
        main(
            [
                "encode",
                str(tiny_dir),
                str(tmp_path / "q.jsonl"),
                "-o",
                str(tmp_path / "q.parquet"),
                "--query",
                "--instruction",
                "Find",
            ]
        )
        == 1
    )
    assert "q.jsonl:2: no string field 'text'" in capsys.readouterr().err
    (tmp_path / "q.jsonl").write_text('{"text": "a"}\n')
    assert (
        main(
            [
                "encode",
                str(tiny_dir),
                str(tmp_path / "q.jsonl"),
                "-o",
                str(tmp_path / "q.parquet"),
                "--query",
                "--instruction",
                "Find",
                "-q",
            ]
        )
        == 0
    )
    import polars as pl

    df = pl.read_parquet(tmp_path / "q.parquet")
    assert df.columns == ["text", "embedding"] and df["embedding"].dtype == pl.Array(pl.Float32, 32)

    bad = tmp_path / "bad"
    (bad / "qrels").mkdir(parents=True)
    (bad / "corpus.jsonl").write_text('{"_id": "1", "text": "x"}\n{oops\n')
    (bad / "queries.jsonl").write_text('{"_id": "q", "text": "x"}\n')
    (bad / "qrels" / "test.tsv").write_text("q\t1\t1\n")
    assert main(["eval", str(tiny_dir), str(bad), "-q"]) == 2
    assert "corpus.jsonl:2: not valid JSON" in capsys.readouterr().err
