"""The MTEB adapter runs under ``mteb.evaluate`` on tasks built from local files (no
download), passes each task's instruction to queries only, and gives e5x's own numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

mteb = pytest.importorskip("mteb", reason="pip install mteb (test extra)")

from datasets import Dataset, DatasetDict  # noqa: E402
from mteb.abstasks.retrieval import AbsTaskRetrieval  # noqa: E402
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData  # noqa: E402
from mteb.abstasks.sts import AbsTaskSTS  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402
from mteb.models.models_protocols import EncoderProtocol  # noqa: E402

from _minilm import minilm, minilm_path  # noqa: E402,F401  (fixtures)
from e5x.eval import EvalConfig, evaluate  # noqa: E402
from e5x.formats.benchmark import load_beir, load_sts  # noqa: E402
from e5x.tasks.instructions import TASK_INSTRUCTIONS  # noqa: E402
from e5x.eval.mteb_adapter import E5xMTEBModel  # noqa: E402

_META = dict(
    description="local files",
    reference="https://example.org",
    dataset={"path": "local", "revision": "local"},
    category="t2t",
    eval_splits=["test"],
    eval_langs=["eng-Latn"],
    date=("2020-01-01", "2020-01-01"),
    dialect=[],
    domains=[],
    task_subtypes=[],
    license="cc-by-4.0",
    annotations_creators="derived",
    modalities=["text"],
    sample_creation="found",
    bibtex_citation="",
)


def local_sts_task(path: Path, name: str = "STSBenchmark") -> AbsTaskSTS:
    sts = load_sts(path)

    class LocalSTS(AbsTaskSTS):
        metadata = TaskMetadata(type="STS", name=name, main_score="cosine_spearman", **_META)
        min_score, max_score = 0, 5

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            self.dataset = DatasetDict(
                {
                    "test": Dataset.from_dict(
                        {"sentence1": sts.sentences1, "sentence2": sts.sentences2, "score": sts.scores}
                    )
                }
            )
            self.data_loaded = True

    return LocalSTS()


def local_retrieval_task(folder: Path, name: str) -> AbsTaskRetrieval:
    data = load_beir(folder)

    class LocalRetrieval(AbsTaskRetrieval):
        metadata = TaskMetadata(type="Retrieval", name=name, main_score="ndcg_at_10", **_META)

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            corpus = [json.loads(x) for x in (folder / "corpus.jsonl").read_text().splitlines()]
            split = RetrievalSplitData(
                queries=Dataset.from_dict({"id": data.query_ids, "text": data.query_texts}),
                corpus=Dataset.from_dict(
                    {
                        "id": [c["_id"] for c in corpus],
                        "title": [c["title"] for c in corpus],
                        "text": [c["text"] for c in corpus],
                    }
                ),
                relevant_docs=data.qrels,
                top_ranked=None,
            )
            self.dataset = {"default": {"test": split}}
            self.data_loaded = True

    return LocalRetrieval()


def _scores(result: Any) -> dict[str, float]:
    (task_result,) = result.task_results
    return task_result.scores["test"][0]


@pytest.fixture(scope="module")
def tiny_embedder(tmp_path_factory):
    from e5x.model.config import EmbeddingSpec
    from e5x.model.embedder import Embedder
    from e5x.model.loading import TinyModelConfig, build_byte_tokenizer, build_tiny_model

    tok = build_byte_tokenizer()
    d = tmp_path_factory.mktemp("tiny")
    build_tiny_model(TinyModelConfig(hidden_size=32, intermediate_size=64, seed=2), len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    EmbeddingSpec(max_length=64).save(d)
    return Embedder.from_pretrained(d, show_progress=False)


@pytest.fixture(scope="module")
def small_scifact(shared_data, tmp_path_factory) -> Path:
    """15 SciFact test claims, their documents and 60 others, in BEIR layout."""
    src = shared_data / "scifact"
    lines = (src / "qrels" / "test.tsv").read_text().splitlines()
    rows = [ln.split("\t") for ln in lines[1:]]
    qids = list(dict.fromkeys(r[0] for r in rows))[:15]
    rows = [r for r in rows if r[0] in qids]
    rel = {r[1] for r in rows}
    corpus = [json.loads(x) for x in (src / "corpus.jsonl").read_text().splitlines()]
    docs = [c for c in corpus if c["_id"] in rel] + [c for c in corpus if c["_id"] not in rel][:60]
    d = tmp_path_factory.mktemp("mteb") / "scifact"
    (d / "qrels").mkdir(parents=True)
    (d / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in docs))
    (d / "queries.jsonl").write_text(
        "".join(x + "\n" for x in (src / "queries.jsonl").read_text().splitlines() if json.loads(x)["_id"] in qids)
    )
    (d / "qrels" / "test.tsv").write_text(lines[0] + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    return d


def test_adapter_satisfies_the_mteb_encoder_protocol(tiny_embedder):
    model = E5xMTEBModel(tiny_embedder)
    assert isinstance(model, EncoderProtocol)
    assert model.mteb_model_meta.embed_dim == 32 and model.mteb_model_meta.max_tokens == 64


def test_retrieval_under_mteb_passes_instructions_to_queries_only(tiny_embedder, small_scifact):
    model = E5xMTEBModel(tiny_embedder)
    result = mteb.evaluate(
        model,
        local_retrieval_task(small_scifact, "SciFact"),
        cache=None,
        show_progress_bar=False,
        encode_kwargs={"batch_size": 8},
    )
    n_docs = len((small_scifact / "corpus.jsonl").read_text().splitlines())
    assert sorted(model.calls, key=str) == sorted(
        [("SciFact", TASK_INSTRUCTIONS["SciFact"], 15), ("SciFact", None, n_docs)], key=str
    )
    ours = evaluate(tasks=[str(small_scifact)], embedder=tiny_embedder, show_progress=False)["SciFact"]
    theirs = _scores(result)
    assert 100 * theirs["ndcg_at_10"] == pytest.approx(ours.metrics["ndcg_at_10"], abs=0.01)
    assert 100 * theirs["recall_at_100"] == pytest.approx(ours.metrics["recall_at_100"], abs=0.01)
    assert 100 * theirs["mrr_at_10"] == pytest.approx(ours.metrics["mrr_at_10"], abs=0.01)


def test_unknown_task_falls_back_to_the_type_default_and_overrides_win(tiny_embedder, small_scifact):
    model = E5xMTEBModel(tiny_embedder, instructions={"MyLocalRetrieval": "Find the abstract"})
    mteb.evaluate(model, local_retrieval_task(small_scifact, "MyLocalRetrieval"), cache=None, show_progress_bar=False)
    assert {i for _, i, _ in model.calls} == {"Find the abstract", None}
    bare = E5xMTEBModel(tiny_embedder, use_instructions=False)
    mteb.evaluate(bare, local_retrieval_task(small_scifact, "SciFact"), cache=None, show_progress_bar=False)
    assert {i for _, i, _ in bare.calls} == {None}


def test_stsb_under_mteb_reproduces_published_minilm_score(minilm, shared_data):
    """MiniLM through the adapter under mteb.evaluate: STS-B test Spearman 82.03 (MTEB)."""
    path = shared_data / "sts" / "stsbenchmark"
    model = E5xMTEBModel(minilm, use_instructions=False)
    theirs = _scores(
        mteb.evaluate(
            model, local_sts_task(path), cache=None, show_progress_bar=False, encode_kwargs={"batch_size": 64}
        )
    )
    assert {i for _, i, _ in model.calls} == {None}
    assert 100 * theirs["cosine_spearman"] == pytest.approx(82.03, abs=0.1)
    ours = evaluate(EvalConfig(tasks=[str(path)], use_instructions=False, show_progress=False), embedder=minilm)
    assert ours["STSBenchmark"].score == pytest.approx(100 * theirs["cosine_spearman"], abs=1e-3)


def local_classification_task(name: str = "Banking77Classification") -> Any:
    """Two intents, phrased with varying numbers; train and test splits."""
    from mteb.abstasks.classification import AbsTaskClassification

    def split(n: int, seed: int) -> dict[str, list[Any]]:
        texts, labels = [], []
        for i in range(n):
            k = seed * 100 + i
            if i % 2:
                texts.append(f"my card {k} was lost, please block it")
            else:
                texts.append(f"what is the exchange rate for {k} euros")
            labels.append(i % 2)
        return {"text": texts, "label": labels}

    class LocalClassification(AbsTaskClassification):
        metadata = TaskMetadata(
            type="Classification", name=name, main_score="accuracy", **{**_META, "eval_splits": ["test"]}
        )

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            self.dataset = DatasetDict(
                {"train": Dataset.from_dict(split(24, 1)), "test": Dataset.from_dict(split(12, 2))}
            )
            self.data_loaded = True

    return LocalClassification()


def _spy_norms(model: E5xMTEBModel) -> list[tuple[str, Any]]:
    """Record the row norms of every array the adapter hands to mteb."""
    import numpy as np

    seen: list[tuple[str, Any]] = []
    encode = model.encode

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = encode(*args, **kwargs)
        seen.append((kwargs["task_metadata"].type, np.linalg.norm(out, axis=1)))
        return out

    model.encode = spy  # type: ignore[method-assign]
    return seen


def test_classification_under_mteb_is_instructed_and_not_normalised(tiny_embedder):
    import numpy as np

    model = E5xMTEBModel(tiny_embedder)
    norms = _spy_norms(model)
    result = mteb.evaluate(model, local_classification_task(), cache=None, show_progress_bar=False)
    assert 0.0 <= _scores(result)["accuracy"] <= 1.0
    # Both splits are encoded as queries with the paper's instruction for the task.
    assert {(t, i) for t, i, _ in model.calls} == {
        ("Banking77Classification", TASK_INSTRUCTIONS["Banking77Classification"])
    }
    assert norms and all(t == "Classification" for t, _ in norms)
    all_norms = np.concatenate([n for _, n in norms])
    # Raw last-token states of the random tiny model: norms far from 1 (about sqrt(32) here).
    assert np.all(np.abs(all_norms - 1.0) > 0.1), all_norms[:5]
    # The embedder's own setting is untouched afterwards, and STS stays normalised.
    assert tiny_embedder.spec.normalize is True
    norms.clear()
    sts_meta = TaskMetadata(type="STS", name="STSBenchmark", main_score="cosine_spearman", **_META)
    model.encode(_loader(["a cat sat", "a dog ran"]), task_metadata=sts_meta, hf_split="test", hf_subset="default")
    ((_, sts_norms),) = norms
    np.testing.assert_allclose(sts_norms, 1.0, atol=1e-5)
    # Opting back in normalises classification too.
    on = E5xMTEBModel(tiny_embedder, normalize_classification=True)
    out = on.encode(
        _loader(["my card was lost"]),
        task_metadata=local_classification_task().metadata,
        hf_split="test",
        hf_subset="default",
    )
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def _loader(texts: list[str]) -> Any:
    return [{"text": texts}]


def test_texts_are_truncated_at_512_tokens_capped_by_the_model(tiny_embedder):
    import numpy as np

    from e5x.model.config import EmbeddingSpec
    from e5x.model.embedder import Embedder

    assert E5xMTEBModel(tiny_embedder).max_length == 64  # the model's own limit is lower
    long_spec = Embedder(
        tiny_embedder.model, tiny_embedder.tokenizer, EmbeddingSpec(max_length=4096), show_progress=False
    )
    wide = E5xMTEBModel(long_spec)
    assert wide.max_length == 512 and wide.mteb_model_meta.max_tokens == 512
    # Two documents that differ only after the first 16 tokens (bytes) embed identically at 16.
    meta = local_classification_task().metadata
    docs = ["x" * 40 + " ends one way", "x" * 40 + " ends another way entirely"]
    cut = E5xMTEBModel(tiny_embedder, max_length=16).encode(
        _loader(docs),
        task_metadata=meta,
        hf_split="test",
        hf_subset="default",
        prompt_type=mteb.types.PromptType.document,
    )
    np.testing.assert_array_equal(cut[0], cut[1])
    full = E5xMTEBModel(tiny_embedder).encode(
        _loader(docs),
        task_metadata=meta,
        hf_split="test",
        hf_subset="default",
        prompt_type=mteb.types.PromptType.document,
    )
    assert not np.allclose(full[0], full[1])
