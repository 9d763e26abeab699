"""The decoder run over a packed stream, computing only what the pooled rows need.

``packed_hidden_at`` drives the layers of a Llama/Mistral/Qwen2 decoder itself: no LM head,
the final norm only at the pooled rows and, for a pooling that reads the last token only, the
last layer trimmed to those rows (keys and values still cover the whole stream). Other models,
and DDP- or FSDP-wrapped ones, go through their own forward with the packed attention's
keyword arguments (``e5x.model.attention``) and are pooled after.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from e5x.model.attention import attention_shape, is_packing_enabled, resolve_backend, varlen_attention
from e5x.model.unwrap import decoder_of

if TYPE_CHECKING:
    import torch

    from e5x.model.packing import PackedBatch


# Decoders whose forward is exactly embed -> layers -> final norm (no embedding scale, no
# extra norms) with the q/k/v/o + norm + MLP layer of Llama: safe to drive by hand and trim.
OWN_LOOP_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2"})


def packed_hidden_at(
    model: Any,
    packed: PackedBatch,
    *,
    pooling: str = "last_token",
    backend: str = "auto",
    trim_last_layer: bool = True,
) -> torch.Tensor:
    """Each sequence's pooled final hidden states, ``[B, H]``, from one packed stream
    (``pooling`` names an ``e5x.model.pooling`` entry; the default is the last token).

    On Llama/Mistral-style decoders this runs the layers itself so that it never computes what
    the loss does not read: no LM head and, for a pooling that reads the last token only, the
    final norm only on the B pooled rows and (with ``trim_last_layer``) the last layer's query
    projection, attention output, MLP and norms only for the pooled rows (keys/values still
    cover the whole stream). Other models go through their own forward with ``position_ids`` +
    ``cu_seq_lens_*`` and are pooled after. Gradient checkpointing follows each layer's
    ``gradient_checkpointing`` flag (see ``e5x.model.fast.set_checkpointing`` for selective
    checkpointing).
    """
    from e5x.model.pooling import get_pooling

    pool = get_pooling(pooling)
    if not is_packing_enabled(model):
        raise RuntimeError("call e5x.model.attention.enable_packing(model) before packed forwards")
    device = next(model.parameters()).device
    packed = packed.to(device) if packed.input_ids.device != device else packed
    # outside the layers: "auto" may run a trial, at this model's head_dim and GQA ratio
    backend = resolve_backend(backend, device, attention_shape(model))
    kw = packed.attention_kwargs(backend)
    dec = decoder_of(model)
    own_loop = (
        dec is not None
        and getattr(dec.config, "model_type", None) in OWN_LOOP_MODEL_TYPES
        and not _fsdp_wrapped(model)
        and not _is_ddp(model)
    )
    if not own_loop:
        # Other architectures may do more in their forward (Gemma scales embeddings); FSDP2
        # gathers the root's parameters (embeddings, final norm) in the root's forward hook and
        # DDP prepares its gradient reducer in its forward. All go through their own forward.
        out = model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False, **kw)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return pool.pool_packed(hidden[0], packed)

    h = dec.embed_tokens(packed.input_ids)
    pos_emb = dec.rotary_emb(h, position_ids=packed.position_ids)
    layers = list(dec.layers)
    trim = trim_last_layer and pool.last_token_only and _trimmable(layers[-1])
    n_full = len(layers) - 1 if trim else len(layers)
    for layer in layers[:n_full]:
        h = layer(h, attention_mask=None, position_ids=packed.position_ids, position_embeddings=pos_emb, **kw)
        h = h[0] if isinstance(h, tuple) else h
    if not pool.last_token_only:
        return pool.pool_packed(dec.norm(h[0]), packed)
    if n_full == len(layers):
        pooled = h[0].index_select(0, packed.last_index)
    else:
        pooled = _last_layer_at(layers[-1], h, pos_emb, packed, backend)
    return dec.norm(pooled)


def _is_ddp(model: Any) -> bool:
    import torch

    return isinstance(model, torch.nn.parallel.DistributedDataParallel)


def _fsdp_wrapped(model: Any) -> bool:
    cached = getattr(model, "_e5x_fsdp", None)
    if cached is None:
        # fully_shard swaps a module's class for a generated "FSDP<Name>" subclass
        cached = any(type(m).__name__.startswith("FSDP") for m in model.modules())
        try:
            object.__setattr__(model, "_e5x_fsdp", cached)
        except (AttributeError, TypeError):  # a wrapper refusing attributes: recompute next time
            cached = bool(cached)
    return bool(cached)


def _trimmable(layer: Any) -> bool:
    attn = getattr(layer, "self_attn", None)
    return (
        attn is not None
        and all(hasattr(attn, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim"))
        and not hasattr(attn, "q_norm")  # Qwen3/OLMo-style qk-norm: not handled here
        and all(hasattr(layer, a) for a in ("input_layernorm", "post_attention_layernorm", "mlp"))
    )


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [1, H, N, D] with cos/sin [1, N, D] (the Llama rotate-half convention)."""
    import torch

    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _last_layer_at(layer: Any, h: torch.Tensor, pos_emb: Any, packed: PackedBatch, backend: str) -> torch.Tensor:
    """The last decoder layer evaluated only where the loss reads it: keys and values for the
    whole stream, everything else for the B pooled rows. Returns ``[B, H]`` (before the final
    norm). Cheap, so it is never checkpointed."""
    import torch

    attn = layer.self_attn
    idx = packed.last_index
    d = attn.head_dim
    x = layer.input_layernorm(h)  # [1, T, H]
    x_last = x[:, idx]  # [1, B, H]
    cos, sin = pos_emb
    # Keys and values of the real tokens only: a pad tail (pad_to_multiple_of) has no pooled
    # row, and keys past the last boundary of cu_k give varlen kernels NaN gradients.
    n_real = packed.useful_tokens
    x_kv = x[:, :n_real] if n_real < x.shape[1] else x
    k = attn.k_proj(x_kv).view(1, n_real, -1, d).transpose(1, 2)
    v = attn.v_proj(x_kv).view(1, n_real, -1, d).transpose(1, 2)
    q = attn.q_proj(x_last).view(1, idx.shape[0], -1, d).transpose(1, 2)
    # RoPE promotes to the cos/sin dtype; SDPA under autocast would cast back, so do the same.
    k = _rope(k, cos[:, :n_real], sin[:, :n_real]).to(v.dtype)
    q = _rope(q, cos[:, idx], sin[:, idx]).to(v.dtype)
    b = idx.shape[0]
    cu_q = torch.arange(b + 1, device=idx.device, dtype=torch.int32)
    cu_k = packed.cu_seqlens[: b + 1]  # drop a tail pad segment: it has no pooled row
    scale = getattr(attn, "scaling", 1.0 / math.sqrt(d))
    window = getattr(getattr(attn, "config", None), "sliding_window", None)
    # The pooled token is the last of its segment, so causally it sees every key of it:
    # non-causal attention says the same without relying on how a kernel aligns a causal
    # mask when query and key segments differ in length (only a window needs that).
    use_window = window is not None and packed.max_seqlen > window
    bounds_k = packed.segment_bounds()[: b + 1]
    o = varlen_attention(
        q[0].transpose(0, 1),
        k[0].transpose(0, 1),
        v[0].transpose(0, 1),
        cu_q,
        cu_k,
        1,
        packed.max_seqlen,
        scale=scale,
        causal=use_window,
        sliding_window=window,
        backend=backend,
        bounds=(range(b + 1), bounds_k),
    )  # [B, Hq, D]
    o = attn.o_proj(o.reshape(1, b, -1))
    r = h[:, idx] + o
    r = r + layer.mlp(layer.post_attention_layernorm(r))
    return r[0]
