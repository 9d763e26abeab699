"""Activation memory of a training step: the fused LoRA dropout and a bound that catches blow-ups.

RSS is not a reliable CI signal (glibc keeps freed heap, other processes share the machine),
so the tests count what autograd actually keeps for backward: the bytes of every distinct
storage saved by a training forward, parameters excluded. That number is deterministic and
is what the peak grows with (SmolLM2-135M at the quickstart's batch: 3.67 GiB before the fused
dropout, 2.46 GiB after, padded; 2.25 -> 1.55 GiB packed).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from _tiny import TINY, tiny_model, tiny_tokenizer
from e5x.data.batch import Batch
from e5x.model.loading import apply_lora
from e5x.model.text import format_query, tokenize
from e5x.training.step import embed, forward_backward

# Proportions of a real decoder (SmolLM2: I = 2.67 H, 3 query heads per KV head; LoRA rank
# small next to H) at a size that runs in well under a second.
SHAPE = replace(
    TINY,
    arch="llama",
    hidden_size=96,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=6,
    num_key_value_heads=2,
)
RANK = 4

QUERIES = [format_query(f"code {c}", "Find the code") for c in ["abcd", "qzx", "mnopqrst", "ab", "hello there"]]
DOCS = [f"the code {c} is here" for c in ["abcd", "qzx", "mnopqrst", "ab", "hello there"]]


pytestmark = pytest.mark.usefixtures("one_thread")


def lora_model(fuse: bool, dropout: float = 0.1, packing: bool = False):
    torch.manual_seed(0)
    model = apply_lora(
        tiny_model(SHAPE), r=RANK, alpha=2 * RANK, dropout=dropout, gradient_checkpointing=False, fuse_dropout=fuse
    )
    with torch.no_grad():  # LoRA B starts at zero (no lora_A gradient, no LoRA output): perturb
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    if packing:
        from e5x.model.attention import enable_packing

        enable_packing(model)
    return model.train()


def batch() -> Batch:
    tok = tiny_tokenizer()
    return Batch(tokenize(tok, QUERIES, 64, "right"), tokenize(tok, DOCS, 64, "right"))


def embed_fn(packing: bool):
    if packing:
        from e5x.model.embed import embed_packed_inputs

        return embed_packed_inputs
    return embed


def saved_bytes(model, inputs: dict[str, torch.Tensor], packing: bool) -> int:
    """Bytes of the distinct non-parameter storages autograd saves in one training forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}
    held = []  # keep every saved tensor alive so storage addresses are not reused mid-count

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            saved[st.data_ptr()] = st.nbytes()
            held.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = embed_fn(packing)(model, inputs)
    out.sum().backward()
    return sum(saved.values())


@pytest.mark.parametrize("packing", [False, True])
def test_fused_lora_dropout_is_bit_identical(packing: bool) -> None:
    results = []
    for fuse in (False, True):
        model = lora_model(fuse, packing=packing)
        torch.manual_seed(7)  # the same dropout masks for both
        loss = forward_backward(model, batch(), chunk_size=1000, temperature=0.02, embed_fn=embed_fn(packing))
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss, grads, list(model.state_dict())))
        if fuse:
            fused = [m for m in model.modules() if type(m).__name__ == "DropoutLinear"]
            assert len(fused) == 7 * SHAPE.num_hidden_layers
    (loss0, grads0, keys0), (loss1, grads1, keys1) = results
    assert keys1 == keys0  # checkpoints / adapters see the same parameter names
    assert torch.equal(loss1, loss0)
    assert any(g.abs().sum() > 0 for n, g in grads0.items() if "lora_A" in n)
    for name, g in grads0.items():
        assert torch.equal(grads1[name], g), name


def test_fused_dropout_under_grad_cache_and_in_eval() -> None:
    # GradCache embeds every chunk without a graph (peft's dropout path) and again with one
    # (the fused op): both must draw the masks peft draws, so the run equals the unfused one.
    runs = []
    for fuse in (False, True):
        model = lora_model(fuse)
        torch.manual_seed(3)
        loss = forward_backward(model, batch(), chunk_size=2, temperature=0.02)
        runs.append((loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (loss0, g0), (loss1, g1) = runs
    assert torch.equal(loss1, loss0)
    for name, g in g0.items():
        torch.testing.assert_close(g1[name], g, atol=0, rtol=0, msg=name)
    model.eval()
    with torch.no_grad():
        e1 = embed(model, batch().queries)
        e2 = embed(model, batch().queries)
    assert torch.equal(e1, e2)  # no dropout in eval mode


@pytest.mark.parametrize("packing", [False, True])
def test_training_forward_saves_bounded_activations(packing: bool) -> None:
    b = batch()
    mask = b.queries["attention_mask"]
    # tokens the forward computes: padded positions, or only the real ones when packed
    tokens = int(mask.sum()) if packing else mask.numel()
    h, i, layers = SHAPE.hidden_size, SHAPE.intermediate_size, SHAPE.num_hidden_layers
    kv = h // SHAPE.num_attention_heads * SHAPE.num_key_value_heads
    # What one decoder layer must keep per token (float32 elements):
    #   8h: residual stream x2 (norm inputs), normed inputs x2 (shared by q/k/v and by gate/up,
    #       the fused LoRA-A's x), q after RoPE, attention output, its o_proj input, spare h;
    #   2h: keys and values (the padded SDPA path repeats them to every query head);
    #   4i: gate, up, silu(gate) and their product (down_proj's LoRA input);
    #   (6h + i)/4: the seven bool dropout masks; 7r: the LoRA-A outputs.
    # +15% for the small rest (norms' rstd, RoPE, SDPA's logsumexp). Measured: 2,087 of the
    # 2,553 allowed padded, 2,150 packed. peft's unfused dropout keeps two float copies of
    # every adapted input instead (2,999 / 3,045): a per-token growth of that size fails.
    per_token_layer = 8 * h + 2 * max(h, kv) + 4 * i + (6 * h + i) / 4 + 7 * RANK
    # The packed path runs the last layer only for the pooled rows (plus its keys/values).
    full_layers = layers - 1 if packing else layers
    bound = 1.15 * 4 * tokens * full_layers * per_token_layer
    fused = saved_bytes(lora_model(True, packing=packing), b.queries, packing)
    unfused = saved_bytes(lora_model(False, packing=packing), b.queries, packing)
    assert fused <= bound, (fused, bound)
    assert unfused > bound  # the bound does tell the two apart
    assert fused < 0.75 * unfused, (fused, unfused)
