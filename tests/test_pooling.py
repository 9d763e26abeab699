"""e5x.model.pooling: every registered pooling against a float64 hand reference (padded with
either padding side, packed with and without a tail pad segment), through the packed and padded
forwards of a tiny model, and end to end: a tiny model trained with ``pooling = "mean"`` is
exported and reloaded, and inference embeds exactly as the train step pooled.

Tolerances: the pooled inputs are float32, so a pooling equals its float64 reference to float32
rounding (atol 1e-6 on unit-scale values; float64 input 1e-12). Model-level comparisons use the
packing tests' 1e-5 (see test_packing.py) and the export test's 1e-5 / 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from e5x.model.packing import pack, pack_padded
from e5x.model.pooling import POOLINGS, from_sentence_transformers, get_pooling, sentence_transformers_config
from e5x.model.text import pad


# What each pooling makes of one sequence's real token states (a list of float64 vectors).
def _mean(tokens: list[torch.Tensor]) -> torch.Tensor:
    total = torch.zeros_like(tokens[0])
    for t in tokens:
        total = total + t
    return total / len(tokens)


REFERENCE = {
    "last_token": lambda tokens: tokens[-1],
    "mean": _mean,
    "cls": lambda tokens: tokens[0],
}
LENGTHS = [[1], [3, 7, 1, 5, 2], [9, 9, 4]]  # size 1, odd lengths, equal lengths
H = 13


def test_every_registered_pooling_has_a_reference() -> None:
    assert list(POOLINGS) == list(REFERENCE)


def _padded(lengths: list[int], side: str, dtype: torch.dtype, seed: int):  # type: ignore[no-untyped-def]
    """Hidden states [B, L, H] with random values in padding too, the mask, and each row's
    real token vectors in float64."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    hidden = torch.randn(len(lengths), width, H, generator=g).to(dtype)
    _, mask = pad([[1] * n for n in lengths], 0, side)  # type: ignore[arg-type]
    rows = []
    for b, n in enumerate(lengths):
        start = width - n if side == "left" else 0
        rows.append([hidden[b, start + i].double() for i in range(n)])
    return hidden, mask, rows


@pytest.mark.parametrize("name", list(POOLINGS))
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_padded_pooling_matches_float64_reference(name: str, side: str, dtype: torch.dtype) -> None:
    pooling = get_pooling(name)
    atol = 1e-12 if dtype == torch.float64 else 1e-6
    for seed, lengths in enumerate(LENGTHS):
        hidden, mask, rows = _padded(lengths, side, dtype, seed)
        got = pooling.pool(hidden, mask)
        want = torch.stack([REFERENCE[name](r) for r in rows])
        assert got.shape == (len(lengths), H)
        torch.testing.assert_close(got.double(), want, atol=atol, rtol=0)


@pytest.mark.parametrize("name", list(POOLINGS))
@pytest.mark.parametrize("tail", [None, 8])
def test_packed_pooling_matches_float64_reference(name: str, tail: int | None) -> None:
    pooling = get_pooling(name)
    for seed, lengths in enumerate(LENGTHS):
        packed = pack([[1] * n for n in lengths], pad_to_multiple_of=tail)
        g = torch.Generator().manual_seed(100 + seed)
        hidden = torch.randn(packed.num_tokens, H, generator=g)  # the pad tail is noise too
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        want = torch.stack(
            [REFERENCE[name]([hidden[s + i].double() for i in range(n)]) for s, n in zip(starts, lengths)]
        )
        torch.testing.assert_close(pooling.pool_packed(hidden, packed).double(), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", list(POOLINGS))
@pytest.mark.parametrize("side", ["left", "right"])
def test_packed_and_padded_pooling_agree_and_have_exact_gradients(name: str, side: str) -> None:
    """The same rows pooled from a padded batch and from its packed stream (pack_padded);
    gradients checked against finite differences in float64."""
    pooling = get_pooling(name)
    hidden, mask, _ = _padded([3, 1, 6, 4], side, torch.float64, seed=7)
    packed = pack_padded(mask.clone(), mask)
    stream = hidden[mask.bool()]
    torch.testing.assert_close(pooling.pool_packed(stream, packed), pooling.pool(hidden, mask), atol=1e-12, rtol=0)
    h = hidden.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: pooling.pool(x, mask), (h,))
    s = stream.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: pooling.pool_packed(x, packed), (s,))


def test_unknown_pooling_is_a_one_line_error_naming_the_known_ones(tmp_path: Path) -> None:
    from e5x.model.config import EmbeddingSpec

    with pytest.raises(ValueError) as exc:
        get_pooling("max")
    message = str(exc.value)
    assert "\n" not in message and "'max'" in message
    assert all(name in message for name in POOLINGS)
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        EmbeddingSpec(pooling="max")
    (tmp_path / "e5x.json").write_text(json.dumps({"pooling": "max"}))
    with pytest.raises(ValueError, match=r"e5x\.json: unknown pooling 'max'"):
        EmbeddingSpec.load(tmp_path)


def test_train_config_validates_pooling(tmp_path: Path) -> None:
    from _tiny import toy_triples
    from e5x.training import TrainConfig
    from e5x.training.config import ConfigError

    data = tmp_path / "toy.parquet"
    toy_triples(8).write_parquet(data)
    assert TrainConfig().pooling == "last_token"
    TrainConfig(sources=[{"path": str(data)}], pooling="mean").validate()
    with pytest.raises(ConfigError, match=r"pooling: must be one of last_token\|mean\|cls, got 'max'"):
        TrainConfig(sources=[{"path": str(data)}], pooling="max").validate()


def test_sentence_transformers_config_round_trips() -> None:
    for name in POOLINGS:
        cfg = sentence_transformers_config(name, 32)
        assert cfg["word_embedding_dimension"] == 32 and sum(v is True for v in cfg.values()) == 2  # + include_prompt
        assert from_sentence_transformers(cfg) == name
    assert from_sentence_transformers({"pooling_mode_max_tokens": True}) is None


# ----------------------------------------------------------------------------- tiny model


@pytest.mark.parametrize("name", list(POOLINGS))
@pytest.mark.usefixtures("one_thread")
def test_packed_forward_equals_padded_forward(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Embeddings, loss and LoRA gradients of one contrastive step, packed vs padded (both
    padding sides), and the generic forward path that pools the model's own output."""
    from test_packing import EMB_ATOL, GRAD_RTOL, LOSS_ATOL, random_seqs, step, tiny_model

    def assert_same(a, b) -> None:  # type: ignore[no-untyped-def]
        # Gradient error relative to the largest gradient of any parameter: under cls the first
        # token attends to itself alone, so its query/key gradients are exact zeros plus noise.
        torch.testing.assert_close(a[1], b[1], atol=EMB_ATOL, rtol=0)
        torch.testing.assert_close(a[0], b[0], atol=LOSS_ATOL, rtol=0)
        assert a[2].keys() == b[2].keys()
        scale = max(float(g.abs().max()) for g in b[2].values())
        err = max(float((a[2][n] - b[2][n]).abs().max()) for n in b[2])
        assert err < GRAD_RTOL * scale, (err, scale)

    from e5x.model import decoder
    from e5x.model.attention import enable_packing
    from e5x.model.embed import embed_packed

    model = tiny_model("mistral", layers=2)
    queries, docs = random_seqs([5, 12, 1], seed=21), random_seqs([30, 7, 19, 2, 11, 25], seed=22)
    padded = step(model, queries, docs, packed=False, pooling=name)
    assert_same(step(model, queries, docs, packed=False, pooling=name, padding_side="left"), padded)
    enable_packing(model)
    assert_same(step(model, queries, docs, packed=True, pooling=name), padded)
    assert_same(step(model, queries, docs, packed=True, pooling=name, pad_to_multiple_of=16), padded)
    monkeypatch.setattr(decoder, "decoder_of", lambda m: None)
    with torch.no_grad():
        generic = embed_packed(model, queries + docs, pooling=name)
    torch.testing.assert_close(generic, padded[1], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained_mean(tmp_path_factory):  # type: ignore[no-untyped-def]
    from test_train_run import config

    from e5x.training import train

    tmp = tmp_path_factory.mktemp("mean")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = config(tmp, "mean", pooling="mean")
        return cfg, train(cfg)
    finally:
        torch.set_num_threads(n)


def test_mean_pooling_trains_exports_and_reloads(trained_mean) -> None:  # type: ignore[no-untyped-def]
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from e5x.model.config import EmbeddingSpec
    from e5x.model.embedder import Embedder
    from e5x.model.text import tokenize
    from e5x.training.step import embed

    cfg, result = trained_mean
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.6 * first, result.losses
    path = result.model_dir
    assert path is not None
    spec = EmbeddingSpec.load(path)
    assert spec.pooling == "mean" and spec.append_eos  # tokenized as in training
    st_pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    assert from_sentence_transformers(st_pooling) == "mean"
    assert json.loads((Path(cfg.output_dir) / "train_config.json").read_text())["pooling"] == "mean"

    texts = ["the code abcd is here", "Instruct: Find the code\nQuery: abcd", "x" * 200, "a"]
    tok = AutoTokenizer.from_pretrained(path)
    merged = AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        inputs = tokenize(tok, texts, cfg.max_length)
        train_time = torch.nn.functional.normalize(embed(merged, inputs, pooling="mean"), dim=-1)
        last_token = torch.nn.functional.normalize(embed(merged, inputs), dim=-1)
    assert not torch.allclose(train_time, last_token, atol=1e-2)  # the pooling did change

    emb = Embedder.from_pretrained(path, device="cpu", show_progress=False)
    assert emb.spec.pooling == "mean"
    torch.testing.assert_close(torch.as_tensor(emb.encode(texts)), train_time, atol=1e-5, rtol=1e-4)
    # naming the model's own pooling changes nothing (the EOS rule stays the model's)
    again = Embedder.from_pretrained(path, pooling="mean", device="cpu", show_progress=False)
    assert again.spec == emb.spec
    st = SentenceTransformer(str(path), device="cpu")
    torch.testing.assert_close(st.encode(texts, convert_to_tensor=True), train_time, atol=1e-5, rtol=1e-4)


@pytest.mark.usefixtures("one_thread")
def test_packed_mean_training_matches_padded(tmp_path: Path) -> None:
    from test_train_run import config

    from e5x.training import train

    kw = dict(max_steps=3, batch_size=8, chunk_size=4, lora_dropout=0.0, save_every=100, pooling="mean")
    padded = train(config(tmp_path, "padded", **kw))
    packed = train(config(tmp_path, "packed", packing=True, **kw))
    assert packed.losses == pytest.approx(padded.losses, rel=1e-4, abs=1e-5)
