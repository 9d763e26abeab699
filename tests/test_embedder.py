"""Embedder: last-token pooling at the appended EOS for decoders (tiny random Mistral/Llama
built in-test), mean/cls for BERT encoders (the offline all-MiniLM-L6-v2), LoRA adapters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from e5x.model.config import EmbeddingSpec
from e5x.model.embedder import Embedder
from e5x.model.loading import TinyModelConfig, build_byte_tokenizer, build_tiny_model
from e5x.model.text import format_query

from _minilm import minilm_path  # noqa: F401  (fixture)

TEXTS = ["a", "the cat sat on the mat", "hello world, hello again and again", "xyz" * 20, "dog"]


def _save_tiny(tmp_path: Path, arch: str, spec: EmbeddingSpec | None = EmbeddingSpec()) -> Path:
    tok = build_byte_tokenizer()
    cfg = TinyModelConfig(
        arch=arch,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        seed=3,
    )
    model = build_tiny_model(cfg, len(tok))
    d = tmp_path / arch
    model.save_pretrained(d)
    tok.save_pretrained(d)
    if spec is not None:
        spec.save(d)
    return d


def _manual_last_token(path: Path, texts: list[str], max_length: int = 512) -> np.ndarray:
    """The spec by hand: one text at a time (no padding), EOS appended, hidden state at EOS."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    out = []
    for t in texts:
        ids = tok(t, add_special_tokens=True)["input_ids"][: max_length - 1] + [tok.eos_token_id]
        with torch.no_grad():
            h = model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        out.append(torch.nn.functional.normalize(h, dim=-1).numpy())
    return np.stack(out)


@pytest.mark.parametrize("arch", ["mistral", "llama"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_last_token_embedding_is_hidden_state_at_appended_eos(tmp_path, arch, padding_side):
    d = _save_tiny(tmp_path, arch, EmbeddingSpec(padding_side=padding_side))
    emb = Embedder.from_pretrained(d, show_progress=False, batch_size=2)
    assert emb.spec.pooling == "last_token" and emb.spec.append_eos
    got = emb.encode_documents(TEXTS)
    want = _manual_last_token(d, TEXTS)
    assert got.shape == (len(TEXTS), 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_eos_is_appended_and_survives_truncation(tmp_path):
    d = _save_tiny(tmp_path, "mistral")
    emb = Embedder.from_pretrained(d, show_progress=False, max_length=8)
    ids = emb._token_ids(["a long text that is truncated", "b"], 8)
    eos = emb.tokenizer.eos_token_id
    assert [s[-1] for s in ids] == [eos, eos]
    assert len(ids[0]) == 8 and ids[1][0] == emb.tokenizer.bos_token_id
    np.testing.assert_allclose(
        emb.encode(["a long text that is truncated"]),
        _manual_last_token(d, ["a long text that is truncated"], 8),
        atol=2e-5,
    )


def test_batching_and_length_sorting_keep_input_order(tmp_path):
    d = _save_tiny(tmp_path, "llama")
    emb = Embedder.from_pretrained(d, show_progress=False)
    texts = [f"text number {i} " + "x" * (i * 7 % 23) for i in range(13)]
    together = emb.encode(texts, batch_size=4)
    one_by_one = np.concatenate([emb.encode([t], batch_size=1) for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=2e-5)
    assert isinstance(emb.encode(texts[:2], output="torch"), torch.Tensor)
    assert emb.encode([]).shape == (0, 32)


def test_queries_get_the_instruction_template_documents_stay_bare(tmp_path):
    d = _save_tiny(tmp_path, "mistral")
    emb = Embedder.from_pretrained(d, show_progress=False)
    instr = "Given a claim, retrieve documents"
    q = emb.encode_queries(["is the sky blue"], instruction=instr)
    np.testing.assert_allclose(q, emb.encode([format_query("is the sky blue", instr)]), atol=1e-6)
    assert format_query("is the sky blue", instr) == f"Instruct: {instr}\nQuery: is the sky blue"
    assert not np.allclose(q, emb.encode_documents(["is the sky blue"]), atol=1e-3)
    np.testing.assert_allclose(emb.encode_queries(["x"]), emb.encode_documents(["x"]), atol=1e-6)
    with pytest.raises(TypeError, match="single str"):
        emb.encode_documents("not a list")


def test_plain_hf_decoder_defaults_to_last_token_and_pooling_override(tmp_path):
    d = _save_tiny(tmp_path, "mistral", spec=None)  # no e5x.json: any HF model
    last = Embedder.from_pretrained(d, show_progress=False)
    assert last.spec.pooling == "last_token" and last.spec.append_eos
    np.testing.assert_allclose(last.encode(TEXTS[:2]), _manual_last_token(d, TEXTS[:2]), atol=2e-5)
    mean = Embedder.from_pretrained(d, pooling="mean", show_progress=False)
    assert mean.spec.pooling == "mean" and not mean.spec.append_eos
    assert not np.allclose(mean.encode(TEXTS[:2]), last.encode(TEXTS[:2]), atol=1e-3)


def test_lora_adapter_dir_loads_base_plus_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    base_dir = _save_tiny(tmp_path, "mistral", spec=None)
    from transformers import AutoModel

    base = AutoModel.from_pretrained(base_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():  # LoRA B starts at zero; make the adapter do something
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    adapter_dir = tmp_path / "run" / "adapter"
    peft_model.save_pretrained(adapter_dir)
    merged_dir = tmp_path / "merged"
    peft_model.merge_and_unload().save_pretrained(merged_dir)
    build_byte_tokenizer().save_pretrained(merged_dir)

    via_adapter = Embedder.from_pretrained(adapter_dir, base_model=base_dir, show_progress=False)
    via_merged = Embedder.from_pretrained(merged_dir, show_progress=False)
    plain_base = Embedder.from_pretrained(base_dir, show_progress=False)
    a, m, b = (e.encode(TEXTS) for e in (via_adapter, via_merged, plain_base))
    np.testing.assert_allclose(a, m, atol=1e-4)
    assert not np.allclose(a, b, atol=1e-3)  # the adapter really was applied


def test_adapter_for_another_model_class_is_an_error(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import MistralConfig, MistralForCausalLM

    base_dir = _save_tiny(tmp_path, "mistral", spec=None)
    cfg = MistralConfig.from_pretrained(base_dir)
    lm = MistralForCausalLM(cfg)  # keys "model.layers..." instead of "layers..."
    adapter_dir = tmp_path / "lm_adapter"
    get_peft_model(lm, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter_dir)
    with pytest.raises(ValueError, match="match no module"):
        Embedder.from_pretrained(adapter_dir, base_model=base_dir, show_progress=False)


def test_saved_spec_is_used_and_overridable(tmp_path):
    d = _save_tiny(tmp_path, "llama", EmbeddingSpec(max_length=16, normalize=False))
    emb = Embedder.from_pretrained(d, show_progress=False)
    assert emb.spec.max_length == 16 and emb.spec.normalize is False
    assert not np.allclose(np.linalg.norm(emb.encode(TEXTS), axis=1), 1.0)
    assert Embedder.from_pretrained(d, max_length=64, show_progress=False).spec.max_length == 64
    (d / "e5x.json").write_text(json.dumps({"pooling": "last_token", "bogus": 1}))
    with pytest.raises(ValueError, match="unknown keys"):
        Embedder.from_pretrained(d)
    with pytest.raises(FileNotFoundError):
        Embedder.from_pretrained(tmp_path / "nope")


# ---------------------------------------------------------------- BERT encoder (MiniLM)
def test_minilm_mean_pooling_matches_sentence_transformers(minilm_path):
    from sentence_transformers import SentenceTransformer

    emb = Embedder.from_pretrained(minilm_path, show_progress=False, device="cpu")
    # the sentence-transformers config decides: mean pooling, normalised, 256 tokens, no EOS
    assert (emb.spec.pooling, emb.spec.normalize, emb.spec.max_length, emb.spec.append_eos) == (
        "mean",
        True,
        256,
        False,
    )
    texts = ["A man is playing a guitar.", "The quick brown fox " * 80, "x"]
    st = SentenceTransformer(str(minilm_path), device="cpu")
    np.testing.assert_allclose(emb.encode(texts, batch_size=2), st.encode(texts), atol=1e-5)
    cls = Embedder.from_pretrained(minilm_path, pooling="cls", normalize=False, show_progress=False)
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(minilm_path), AutoModel.from_pretrained(minilm_path)
    with torch.no_grad():
        h = model(**tok(texts[:1], return_tensors="pt")).last_hidden_state[:, 0]
    np.testing.assert_allclose(cls.encode(texts[:1]), h.numpy(), atol=1e-5)
