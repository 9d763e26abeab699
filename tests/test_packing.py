"""Packed (padding-free) batches give the same embeddings, loss and LoRA gradients as padded ones.

Tolerances: the model runs in float32 on CPU. Packed and padded forwards do the same
arithmetic per real token (matmuls are row-wise; padded keys are masked to exact zeros), so
they differ only by summation order inside SDPA / matmul kernels: ~1e-7 relative per op,
growing through a few layers and the 1/tau = 50 logit scale of InfoNCE. We allow 1e-5
(absolute on unit-scale embeddings and on the loss) and 1e-4 relative on gradients; a mask
that leaked across sequences changes embeddings at the 1e-2 level (the negative control).
"""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from e5x.model import attention, decoder
from e5x.model.attention import enable_packing
from e5x.model.embed import embed_length_grouped, embed_packed, embed_packed_inputs, embed_padded
from e5x.model.fast import set_checkpointing
from e5x.model.packing import PackedBatch, length_grouped_chunks, pack, pack_padded, padding_share
from e5x.model.unwrap import decoder_of

VOCAB = 97
EMB_ATOL = 1e-5
LOSS_ATOL = 1e-5
GRAD_RTOL = 1e-4


def tiny_model(
    arch: str = "mistral", *, layers: int = 3, sliding_window: int | None = None, seed: int = 0
) -> torch.nn.Module:
    torch.manual_seed(seed)
    common = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 112,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
    }
    if arch == "mistral":
        cfg = transformers.MistralConfig(sliding_window=sliding_window, **common)
    elif arch == "qwen2":  # biased q/k/v projections
        cfg = transformers.Qwen2Config(**common)
    else:
        cfg = transformers.LlamaConfig(**common)
    model = transformers.AutoModel.from_config(cfg, attn_implementation="sdpa")
    # LoRA on all linear layers as in the recipe. Dropout 0: dropout masks are random per
    # call, so two forwards could never be compared; the layout change is what is tested.
    model = peft.get_peft_model(
        model, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")
    )
    g = torch.Generator().manual_seed(seed + 1)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero; make the adapters do something
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def random_seqs(lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, VOCAB) for _ in range(n - 1)] + [2] for n in lengths]  # EOS=2 last


def info_nce(q: torch.Tensor, d: torch.Tensor, tau: float = 0.02) -> torch.Tensor:
    """Reference InfoNCE, grouped layout: query i's positive is document i * (Bd // Bq)."""
    q = torch.nn.functional.normalize(q, dim=-1)
    d = torch.nn.functional.normalize(d, dim=-1)
    target = torch.arange(q.shape[0]) * (d.shape[0] // q.shape[0])
    return torch.nn.functional.cross_entropy(q @ d.T / tau, target)


def step(model, queries, docs, packed: bool, **kw):  # type: ignore[no-untyped-def]
    """One contrastive step: (loss, pooled, {lora param: grad})."""
    model.zero_grad(set_to_none=True)
    seqs = queries + docs
    if packed:
        pooled = embed_packed(model, seqs, **kw)
    else:
        pooled = embed_padded(model, seqs, pad_id=0, **kw)
    loss = info_nce(pooled[: len(queries)], pooled[len(queries) :])
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    return loss.detach(), pooled.detach(), grads


def assert_same(a, b) -> None:  # type: ignore[no-untyped-def]
    loss_a, pooled_a, grads_a = a
    loss_b, pooled_b, grads_b = b
    torch.testing.assert_close(pooled_a, pooled_b, atol=EMB_ATOL, rtol=0)
    torch.testing.assert_close(loss_a, loss_b, atol=LOSS_ATOL, rtol=0)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        ga, gb = grads_a[name], grads_b[name]
        scale = gb.abs().max().clamp_min(1e-8)
        err = (ga - gb).abs().max() / scale
        assert err < GRAD_RTOL, f"{name}: max grad error {err:.2e} of max |grad| {scale:.2e}"


# ------------------------------------------------------------------ packing layout


def test_pack_layout_positions_and_boundaries() -> None:
    seqs = [[5, 6, 2], [2], [7, 8, 9, 10, 2]]
    p = pack(seqs)
    assert p.input_ids.tolist() == [[5, 6, 2, 2, 7, 8, 9, 10, 2]]
    assert p.position_ids.tolist() == [[0, 1, 2, 0, 0, 1, 2, 3, 4]]
    assert p.cu_seqlens.tolist() == [0, 3, 4, 9] and p.cu_seqlens.dtype == torch.int32
    assert p.last_index.tolist() == [2, 3, 8]
    assert p.max_seqlen == 5 and p.useful_tokens == p.num_tokens == 9
    assert all(p.input_ids[0, i] == 2 for i in p.last_index.tolist())  # pooled rows are the EOS

    tail = pack(seqs, pad_to_multiple_of=8, pad_id=0)
    assert tail.num_tokens == 16 and tail.useful_tokens == 9
    assert tail.cu_seqlens.tolist() == [0, 3, 4, 9, 16]  # the tail is a segment of its own
    assert tail.last_index.tolist() == [2, 3, 8]
    assert tail.position_ids[0, 9:].tolist() == list(range(7))


def test_pack_rejects_empty() -> None:
    with pytest.raises(ValueError, match="empty batch"):
        pack([])
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        pack([[1, 2], []])


def test_length_grouped_chunks_cover_batch_and_cut_padding() -> None:
    rng = random.Random(3)
    lengths = [rng.randint(1, 64) for _ in range(32)] + [rng.randint(16, 512) for _ in range(64)]
    chunks = length_grouped_chunks(lengths, max_tokens=4096)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    for c in chunks:
        assert len(c) == 1 or max(lengths[i] for i in c) * len(c) <= 4096
    assert padding_share(lengths, chunks) < padding_share(lengths) / 2
    assert length_grouped_chunks([600, 3], max_tokens=512) == [[0], [1]]  # too long: alone
    with pytest.raises(ValueError):
        length_grouped_chunks([1], max_tokens=0)


# ------------------------------------------------------------------ numerics


@pytest.mark.parametrize("arch", ["mistral", "llama", "qwen2"])
def test_packed_equals_padded_loss_embeddings_and_lora_grads(arch: str) -> None:
    model = tiny_model(arch)
    # 4 queries (one of length 1) + 8 documents (one at max length 96)
    queries = random_seqs([1, 7, 12, 5], seed=1)
    docs = random_seqs([30, 96, 17, 44, 3, 60, 25, 9], seed=2)
    padded = step(model, queries, docs, packed=False)
    enable_packing(model)
    assert_same(step(model, queries, docs, packed=True), padded)
    # the last layer run in full (no trimming) is the same too
    assert_same(step(model, queries, docs, packed=True, trim_last_layer=False), padded)
    # padded forwards still work on a model switched to the packed attention
    assert_same(step(model, queries, docs, packed=False), padded)


def test_packing_odd_cases() -> None:
    model = tiny_model("mistral", layers=2)
    enable_packing(model)
    # one sequence; a length-1 sequence alone; every sequence at max length
    for seqs in (random_seqs([23]), random_seqs([1]), random_seqs([128] * 4, seed=5)):
        with torch.no_grad():
            torch.testing.assert_close(embed_packed(model, seqs), embed_padded(model, seqs), atol=EMB_ATOL, rtol=0)
    # left padding is the same embedding as well
    seqs = random_seqs([1, 9, 40], seed=7)
    with torch.no_grad():
        torch.testing.assert_close(
            embed_packed(model, seqs), embed_padded(model, seqs, padding_side="left"), atol=EMB_ATOL, rtol=0
        )


def test_boundaries_matter_negative_control() -> None:
    """The same stream attended without boundaries gives different embeddings: the test above
    would catch a mask that lets sequences see each other."""
    model = tiny_model("mistral", layers=2)
    enable_packing(model)
    seqs = random_seqs([20, 31, 12], seed=9)
    good = pack(seqs)
    leaky = pack(seqs)
    leaky.cu_seqlens = torch.tensor([0, good.num_tokens], dtype=torch.int32)  # one segment
    leaky.max_seqlen = good.num_tokens
    with torch.no_grad():
        a = decoder.packed_hidden_at(model, good)
        b = decoder.packed_hidden_at(model, leaky, trim_last_layer=False)
    assert torch.allclose(a[0], b[0], atol=EMB_ATOL)  # the first sequence sees nothing before it
    assert (a[1:] - b[1:]).abs().max() > 1e-2


def test_sliding_window_matches_padded() -> None:
    model = tiny_model("mistral", layers=2, sliding_window=6)
    queries = random_seqs([3, 14], seed=11)
    docs = random_seqs([20, 5, 9, 33], seed=12)
    padded = step(model, queries, docs, packed=False)
    enable_packing(model)
    assert_same(step(model, queries, docs, packed=True), padded)


def test_selective_checkpointing_same_grads() -> None:
    model = tiny_model("llama", layers=4)
    queries, docs = random_seqs([6, 11], seed=13), random_seqs([40, 8, 22, 31], seed=14)
    enable_packing(model)
    model.train()
    reference = step(model, queries, docs, packed=True)
    assert set_checkpointing(model, keep=1) == 3
    layers = decoder_of(model).layers
    assert [bool(layer.gradient_checkpointing) for layer in layers] == [True, True, True, False]
    assert_same(step(model, queries, docs, packed=True), reference)
    assert set_checkpointing(model, keep=0) == 4
    assert_same(step(model, queries, docs, packed=True), reference)


def test_generic_forward_path_and_flex(monkeypatch: pytest.MonkeyPatch) -> None:
    """Models without the Llama layout go through their own forward with cu_seq_lens kwargs;
    FlexAttention with a document mask gives the same numbers (forward only: no CPU backward)."""
    model = tiny_model("mistral", layers=2)
    seqs = random_seqs([1, 13, 27, 6], seed=15)
    with torch.no_grad():
        ref = embed_padded(model, seqs)
        enable_packing(model)
        flex = embed_packed(model, seqs, backend="flex", pad_to_multiple_of=16)
        monkeypatch.setattr(decoder, "decoder_of", lambda m: None)
        generic = embed_packed(model, seqs)
    torch.testing.assert_close(flex, ref, atol=EMB_ATOL, rtol=0)
    torch.testing.assert_close(generic, ref, atol=EMB_ATOL, rtol=0)


def test_length_grouped_equals_padded_in_input_order() -> None:
    model = tiny_model("llama", layers=2)
    seqs = random_seqs([4, 50, 1, 33, 12, 70, 8], seed=17)
    with torch.no_grad():
        torch.testing.assert_close(
            embed_length_grouped(model, seqs, max_tokens=100), embed_padded(model, seqs), atol=EMB_ATOL, rtol=0
        )


def test_packed_forward_requires_enable_packing() -> None:
    model = tiny_model("mistral", layers=1)
    with pytest.raises(RuntimeError, match="enable_packing"):
        embed_packed(model, random_seqs([3]))


def test_pack_padded_matches_pack_for_both_padding_sides() -> None:
    from e5x.model.text import pad

    seqs = random_seqs([3, 1, 8, 5], seed=19)
    want = pack(seqs)
    for side in ("left", "right"):
        ids, mask = pad(seqs, 0, side)  # type: ignore[arg-type]
        got = pack_padded(ids, mask)
        for field in ("input_ids", "position_ids", "cu_seqlens", "last_index"):
            assert torch.equal(getattr(got, field), getattr(want, field)), (side, field)
        assert got.max_seqlen == want.max_seqlen and got.lengths == want.lengths
    model = tiny_model("llama", layers=2)
    enable_packing(model)
    ids, mask = pad(seqs, 0, "left")
    with torch.no_grad():
        torch.testing.assert_close(
            embed_packed_inputs(model, {"input_ids": ids, "attention_mask": mask}),
            embed_padded(model, seqs),
            atol=EMB_ATOL,
            rtol=0,
        )


def test_backend_trial_accepts_exact_and_rejects_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trial that picks the CUDA backend for 'auto' passes a correct kernel and refuses one
    that ignores segment boundaries; exercised on CPU by standing in for the flex backend."""
    real = attention._sdpa_loop

    def leaky(q, k, v, cu_q, cu_k, **kw):  # type: ignore[no-untyped-def]
        whole = torch.tensor([0, q.shape[0]], dtype=torch.int32)
        return real(q, k, v, whole, whole, **kw)

    monkeypatch.setattr(attention, "_flex_attention", real)
    assert attention._trial("flex", "cpu") is None
    monkeypatch.setattr(attention, "_flex_attention", leaky)
    assert "differs from the SDPA loop" in (attention._trial("flex", "cpu") or "")
    with pytest.raises(ValueError, match="unknown packed attention backend"):
        attention.resolve_backend("nope", torch.device("cpu"))


def test_ddp_wrapped_model_goes_through_its_forward(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Under DDP the packed call must run DDP's forward (its reducer prepares there): the
    result and LoRA gradients still equal the padded reference."""
    import torch.distributed as dist

    model = tiny_model("llama", layers=2)
    queries, docs = random_seqs([1, 9], seed=21), random_seqs([30, 4, 17, 12], seed=22)
    padded = step(model, queries, docs, packed=False)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        enable_packing(ddp)
        assert attention.is_packing_enabled(ddp) and decoder._is_ddp(ddp)
        got = step(ddp, queries, docs, packed=True)
    finally:
        dist.destroy_process_group()
    strip = {k.removeprefix("module."): v for k, v in got[2].items()}
    assert_same((got[0], got[1], strip), padded)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["auto", "torch_varlen", "flash_attn", "flex", "sdpa_loop"])
def test_cuda_backends_match_padded(backend: str) -> None:
    """On a GPU, each packed attention backend (bf16 autocast) gives the padded embeddings and
    LoRA gradients up to bf16 rounding: cosine >= 0.999, gradients within 5% of their scale."""
    if backend == "flash_attn" and attention._flash_attn_varlen() is None:
        pytest.skip("flash_attn not installed")
    if backend == "torch_varlen" and attention._torch_varlen() is None:
        pytest.skip("torch.nn.attention.varlen not available")
    model = tiny_model("mistral", layers=2).cuda()
    queries = random_seqs([1, 7, 12, 5], seed=1)
    docs = random_seqs([30, 96, 17, 44, 3, 60, 25, 9], seed=2)

    def run(packed: bool):  # type: ignore[no-untyped-def]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return step(model, queries, docs, packed=packed, **({"backend": backend} if packed else {}))

    ref = run(False)
    enable_packing(model)
    got = run(True)
    cos = torch.nn.functional.cosine_similarity(got[1].float(), ref[1].float(), dim=-1)
    assert cos.min() > 0.999, cos
    for name, g in got[2].items():
        r = ref[2][name]
        assert (g - r).abs().max() <= 0.05 * r.abs().max().clamp_min(1e-6), name


def test_selective_matmul_checkpointing_same_grads_and_policy() -> None:
    from e5x.model import fast
    from torch.utils.checkpoint import CheckpointPolicy

    aten = torch.ops.aten
    big, lora_b = torch.zeros(8, 512), torch.zeros(8, 16)
    assert fast.save_big_matmuls(None, aten.mm.default, big, torch.zeros(512, 64)) == CheckpointPolicy.MUST_SAVE
    assert (
        fast.save_big_matmuls(None, aten.mm.default, lora_b, torch.zeros(16, 64)) == CheckpointPolicy.PREFER_RECOMPUTE
    )
    assert fast.save_big_matmuls(None, aten.silu.default, big) == CheckpointPolicy.PREFER_RECOMPUTE

    model = tiny_model("llama", layers=4)
    queries, docs = random_seqs([6, 1], seed=23), random_seqs([40, 8, 22, 31], seed=24)
    enable_packing(model)
    model.train()
    reference = step(model, queries, docs, packed=True)  # no checkpointing at all
    # min_k=32 so the tiny model's projections (K = 64 or 112) count as big, LoRA's (K = 4) not
    assert set_checkpointing(model, keep=1, save_matmuls=2, min_k=32) == 3
    layers = decoder_of(model).layers
    funcs = [getattr(layer._gradient_checkpointing_func, "keywords", {}).get("context_fn") for layer in layers]
    assert funcs[0] is None and funcs[1] is not None and funcs[2] is not None  # layer 0 full, 1-2 selective
    assert_same(step(model, queries, docs, packed=True), reference)
    assert_same(step(model, queries, docs, packed=False), reference)  # HF's own forward too


def test_backend_trial_runs_at_the_models_head_dim_and_gqa(monkeypatch: pytest.MonkeyPatch) -> None:
    """'auto' tries a CUDA backend at the shape the model runs (head_dim, query heads, kv
    heads), not a stand-in: Mistral-7B is 128 with GQA 32:8 (the default when unknown)."""
    cfg = transformers.MistralConfig()  # the 7B shape, config only
    assert (
        attention.DEFAULT_ATTN_SHAPE
        == (cfg.hidden_size // cfg.num_attention_heads, cfg.num_attention_heads, cfg.num_key_value_heads)
        == (128, 32, 8)
    )
    model = tiny_model("mistral", layers=1)
    assert attention.attention_shape(model) == (16, 4, 2)
    seen = []
    monkeypatch.setattr(attention, "_trial", lambda name, dev, shape: seen.append((name, dev, shape)))
    monkeypatch.setattr(attention, "_flash_attn_varlen", lambda: object())
    attention._auto_cuda_backend.cache_clear()
    try:
        assert attention._auto_cuda_backend("cuda:7", attention.attention_shape(model)) == "flash_attn"
        assert attention._auto_cuda_backend("cuda:7") == "flash_attn"
    finally:
        attention._auto_cuda_backend.cache_clear()
    assert seen == [("flash_attn", "cuda:7", (16, 4, 2)), ("flash_attn", "cuda:7", (128, 32, 8))]
    # the trial itself at the real shape, incl. the trimmed layer's one-row query segments;
    # a kernel that ignores boundaries fails it there too
    real = attention._sdpa_loop
    monkeypatch.setattr(attention, "_flex_attention", real)
    assert attention._trial_inner("flex", "cpu", (128, 32, 8)) is None

    def leaky(q, k, v, cu_q, cu_k, **kw):  # type: ignore[no-untyped-def]
        kw.pop("bounds", None)
        if q.shape[0] == k.shape[0]:
            return real(q, k, v, cu_q, cu_k, **kw)
        return real(q, k, v, cu_q, torch.tensor([0, 1, 2, 3, k.shape[0]], dtype=torch.int32), **kw)

    monkeypatch.setattr(attention, "_flex_attention", leaky)
    assert "trimmed last layer: out differs" in (attention._trial_inner("flex", "cpu", (16, 4, 2)) or "")


def test_pad_to_multiple_of_with_trimmed_last_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pad tail past the real tokens: every layer treats it as a segment of its own, and the
    trimmed last layer gives varlen attention keys of real tokens only (Tk == cu_k[-1]; a tail
    past the last boundary gives torch's varlen kernel NaN gradients). Same values and grads."""
    model = tiny_model("mistral", layers=2)
    enable_packing(model)
    seqs = random_seqs([5, 1, 12], seed=31)
    real = attention.varlen_attention
    keys = []

    def checked(q, k, v, cu_q, cu_k, *a, **kw):  # type: ignore[no-untyped-def]
        keys.append((k.shape[0], int(cu_k[-1])))
        return real(q, k, v, cu_q, cu_k, *a, **kw)

    monkeypatch.setattr(attention, "varlen_attention", checked)  # every full layer
    monkeypatch.setattr(decoder, "varlen_attention", checked)  # the trimmed last layer
    out = []
    for pad in (None, 8):
        model.zero_grad(set_to_none=True)
        e = embed_packed(model, seqs, pad_to_multiple_of=pad, trim_last_layer=True)
        e.square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        out.append((e.detach(), grads))
    assert keys and all(tk == last for tk, last in keys), keys
    torch.testing.assert_close(out[1][0], out[0][0], atol=EMB_ATOL, rtol=0)
    for a, b in zip(out[1][1], out[0][1]):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-6, rtol=GRAD_RTOL)


def test_sdpa_loop_reads_segment_bounds_without_a_device_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback loop gets the boundaries from the host (PackedBatch.lengths off the CPU),
    never by reading cu_seqlens back from the device (.tolist() would wait for the GPU in
    every layer)."""
    model = tiny_model("llama", layers=2)
    enable_packing(model)
    packed = pack(random_seqs([3, 9, 4], seed=33), pad_to_multiple_of=5)
    want = [0, 3, 12, 16, 20]
    assert packed.segment_bounds() == packed.cu_seqlens.tolist() == want
    on_device = PackedBatch(**{**packed.__dict__, "cu_seqlens": packed.cu_seqlens.to("meta")})
    assert on_device.segment_bounds() == want  # rebuilt from lengths: a meta tensor has no values
    real = attention._sdpa_loop
    calls = []

    def checked(q, k, v, cu_q, cu_k, *, bounds=None, **kw):  # type: ignore[no-untyped-def]
        assert bounds is not None, "the SDPA loop would read cu_seqlens from the device"
        calls.append([list(b) for b in bounds])
        return real(q, k, v, cu_q, cu_k, bounds=bounds, **kw)

    monkeypatch.setattr(attention, "_sdpa_loop", checked)
    out = decoder.packed_hidden_at(model, packed, backend="sdpa_loop", trim_last_layer=True)
    assert out.shape == (3, 64) and torch.isfinite(out).all()
    assert calls == [[want, want], [[0, 1, 2, 3], want[:4]]]  # full layer, then the trimmed one


def test_torch_varlen_without_enable_gqa_repeats_kv_and_says_so_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """An older torch's varlen_attn has no enable_gqa: K/V are repeated to the query heads
    (4x for Mistral's 32:8), which costs memory; it is said once, and gqa_native records it."""
    seen = []

    def old_varlen(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False, scale=None):  # type: ignore[no-untyped-def]
        seen.append(k.shape[1])
        return q

    import inspect

    monkeypatch.setattr(
        attention, "_torch_varlen", lambda: (old_varlen, frozenset(inspect.signature(old_varlen).parameters))
    )
    monkeypatch.setattr(attention, "_GQA_REPEAT_WARNED", False)
    q, k = torch.randn(6, 8, 16), torch.randn(6, 2, 16)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    with pytest.warns(UserWarning, match="repeated 4x"):
        attention.varlen_attention(q, k, k, cu, cu, 4, 4, scale=0.25, backend="torch_varlen")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attention.varlen_attention(q, k, k, cu, cu, 4, 4, scale=0.25, backend="torch_varlen")
    assert seen == [8, 8] and attention.gqa_native("torch_varlen") is False
    assert attention.gqa_native("flash_attn") is True and attention.gqa_native("sdpa_loop") is None
