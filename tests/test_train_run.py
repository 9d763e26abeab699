"""End-to-end runs of e5x.train on a tiny random Mistral: learning, outputs, resume, NaN stop."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from _tiny import toy_triples
from e5x.model.text import tokenize
from e5x.training import TrainConfig, TrainingDiverged, train
from e5x.training.step import embed

TINY = {
    "arch": "mistral",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def config(tmp: Path, name: str, **overrides) -> TrainConfig:
    data = tmp / "toy.parquet"
    if not data.exists():
        toy_triples(256, seed=0).write_parquet(data)
    base = dict(
        tiny_model=TINY,
        sources=[{"path": str(data), "name": "toy", "instruction": "Find the code"}],
        output_dir=str(tmp / name),
        batch_size=16,
        chunk_size=8,
        max_length=40,
        lr=5e-3,
        warmup_steps=3,
        max_steps=30,
        save_every=10,
        precision="fp32",
        progress=False,
        seed=1,
    )
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = config(tmp, "learn")
        return cfg, train(cfg)
    finally:
        torch.set_num_threads(n)


def test_loss_falls_on_learnable_task(trained) -> None:
    cfg, result = trained
    assert result.step == 30 and not result.interrupted and len(result.losses) == 30
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert first > 2.0  # ~ln(32 documents) at random init
    assert last < 0.6 * first, result.losses
    out = Path(cfg.output_dir)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 31))
    assert {"loss", "lr", "grad_norm", "examples_per_s", "tokens_per_s"} <= set(records[0])
    assert records[0]["lr"] < records[2]["lr"]  # warmup...
    assert records[-1]["lr"] < records[5]["lr"]  # ...then linear decay
    assert (out / "loss.png").stat().st_size > 1000


def test_saved_model_reloads_with_identical_embeddings(trained) -> None:
    from peft import PeftModel
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from _tiny import tiny_model
    from e5x.model.config import EmbeddingSpec
    from e5x.model.loading import TinyModelConfig

    cfg, result = trained
    path = result.model_dir
    assert path is not None and (path / "adapter" / "adapter_config.json").is_file()
    spec = EmbeddingSpec.load(path)
    assert spec.pooling == "last_token" and spec.max_length == 40 and spec.append_eos
    texts = ["the code abcd is here", "Instruct: Find the code\nQuery: abcd", "x" * 200]

    tok = AutoTokenizer.from_pretrained(path)
    merged = AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        ours = torch.nn.functional.normalize(embed(merged, tokenize(tok, texts, 40)), dim=-1)
        # the adapter on the base model gives the same embeddings as the merged model
        base = tiny_model(TinyModelConfig(**TINY))
        adapted = PeftModel.from_pretrained(base, path / "adapter").eval()
        via_adapter = torch.nn.functional.normalize(embed(adapted, tokenize(tok, texts, 40)), dim=-1)
    torch.testing.assert_close(via_adapter, ours, atol=1e-5, rtol=1e-4)

    st = SentenceTransformer(str(path), device="cpu")
    st_emb = st.encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(st_emb, ours, atol=1e-5, rtol=1e-4)
    # the query prompt of the training source is saved as a named prompt
    prompted = st.encode(["abcd"], prompt_name="toy", convert_to_tensor=True)
    torch.testing.assert_close(prompted[0], ours[1], atol=1e-5, rtol=1e-4)
    assert st.prompts["document"] == ""

    # and through e5x's own inference API
    from e5x.model.embedder import Embedder

    emb = Embedder.from_pretrained(path, device="cpu", show_progress=False)
    torch.testing.assert_close(torch.as_tensor(emb.encode(texts)), ours, atol=1e-5, rtol=1e-4)
    q = emb.encode_queries(["abcd"], instruction="Find the code")
    torch.testing.assert_close(torch.as_tensor(q)[0], ours[1], atol=1e-5, rtol=1e-4)


def test_resume_after_sigterm_has_same_loss_curve(tmp_path) -> None:
    # Dropout on, so exact resumption also needs the RNG state.
    kw = dict(max_steps=6, save_every=4, lora_dropout=0.1, lr=3e-3, batch_size=8, chunk_size=4)
    straight = train(config(tmp_path, "straight", **kw))

    def stop_at_3(record):
        if record["step"] == 3:
            signal.raise_signal(signal.SIGTERM)  # as a scheduler's preemption would

    first = train(config(tmp_path, "resumed", **kw), on_step=stop_at_3)
    assert first.interrupted and first.step == 3 and first.model_dir is None
    assert first.checkpoint is not None and first.checkpoint.name == "step-00000003"
    second = train(config(tmp_path, "resumed", **kw))
    assert second.step == 6 and len(second.losses) == 3
    assert first.losses + second.losses == pytest.approx(straight.losses, abs=1e-6)
    metrics = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    a = torch.load(straight.checkpoint / "trainable.pt")
    b = torch.load(second.checkpoint / "trainable.pt")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=0, rtol=0)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch) -> None:
    import e5x.training.step as step_mod

    real = step_mod.contrastive_loss
    calls = {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(step_mod, "contrastive_loss", poisoned)
    cfg = config(tmp_path, "nan", max_steps=5, save_every=2, batch_size=8, chunk_size=8)
    with pytest.raises(TrainingDiverged, match=r"step 3: loss nan.*step-00000002"):
        train(cfg)
    ckpts = sorted(p.name for p in (tmp_path / "nan" / "checkpoints").iterdir())
    assert ckpts == ["step-00000002"]
    assert not (tmp_path / "nan" / "model").exists()


def test_cli_runs_the_tiny_recipe(tmp_path, capsys) -> None:
    from e5x.cli import main

    repo = Path(__file__).resolve().parent.parent
    rc = main(
        ["train", str(repo / "configs" / "tiny-cpu.toml"), "--output-dir", str(tmp_path / "cli"), "--max-steps", "2"]
    )
    assert rc == 0
    assert "model saved to" in capsys.readouterr().out
    assert (tmp_path / "cli" / "model" / "e5x.json").is_file()
    assert (tmp_path / "cli" / "model" / "modules.json").is_file()


def test_packed_training_matches_padded(tmp_path) -> None:
    kw = dict(max_steps=3, batch_size=8, chunk_size=4, lora_dropout=0.0, save_every=100)
    padded = train(config(tmp_path, "padded", **kw))
    packed = train(config(tmp_path, "packed", packing=True, **kw))
    assert packed.losses == pytest.approx(padded.losses, rel=1e-4, abs=1e-5)


def test_export_is_all_or_nothing(tmp_path, monkeypatch) -> None:
    import e5x.training.export as export
    from _tiny import tiny_model, tiny_tokenizer
    from e5x.model.loading import apply_lora

    def save(directory: Path) -> Path:
        return export.save_model(apply_lora(tiny_model()), tiny_tokenizer(), directory, max_length=32,
                                 padding_side="right", prompts={"query": "q: "})  # fmt: skip

    target = tmp_path / "model"

    def fail(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(export, "write_sentence_transformers", fail)
        with pytest.raises(OSError, match="disk full"):
            save(target)
    assert not target.exists()  # nothing that looks like a model
    assert save(target) == target and (target / "e5x.json").is_file() and (target / "modules.json").is_file()
    (target / "stale.txt").write_text("from an earlier save")
    save(target)  # replaces the earlier model whole
    assert not (target / "stale.txt").exists() and not (tmp_path / "model.partial").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no e5x model"):
        save(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
