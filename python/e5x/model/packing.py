"""Padding-free training batches: pack every sequence of a step into one token stream.

A step of the recipe holds short queries (~24 tokens) and long documents (~180, up to 512).
Padded to their longest, more than half of the computed tokens are padding. Packing puts
all sequences end to end in one ``[1, T]`` stream with

- ``cu_seqlens`` boundaries (``[0, l0, l0+l1, ...]``, int32, the flash-attention layout),
- position ids that restart at 0 for every sequence (RoPE sees each one from its start),
- attention that never crosses a boundary (varlen attention; see ``attention_backends``),
- pooling by boundary (``cu_seqlens[1:] - 1`` is each sequence's EOS, the last-token row;
  any pooling of ``e5x.model.pooling`` reads the stream through its ``pool_packed``).

The attention is an ``AttentionInterface`` function registered with transformers under
``ATTN_IMPLEMENTATION``. It reads the boundaries from the ``cu_seq_lens_q/k`` and
``max_length_q/k`` keyword arguments (the names transformers' own flash-attention path uses)
and falls back to plain SDPA when they are absent, so a model switched to it by
``enable_packing`` still runs ordinary padded batches (evaluation, the Embedder).

Drop-in for the training loop: ``embed_packed(model, seqs)`` takes the token id lists of
``e5x.model.text.encode`` and returns the pooled ``[B, H]`` embeddings in input order, the
same numbers as ``embed_padded`` (the padded reference) up to float rounding.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

ATTN_IMPLEMENTATION = "e5x_packed"
BACKENDS = ("auto", "flash_attn", "torch_varlen", "flex", "sdpa_loop")


# ----------------------------------------------------------------------------- packing


@dataclass
class PackedBatch:
    """Sequences laid end to end in one stream; see the module docstring."""

    input_ids: torch.Tensor  # [1, T] long
    position_ids: torch.Tensor  # [1, T] long, restarting at 0 per sequence
    cu_seqlens: torch.Tensor  # [N+1] int32, N = sequences (+1 when a tail pad segment exists)
    max_seqlen: int
    last_index: torch.Tensor  # [B] long, stream index of each sequence's last token
    lengths: list[int]  # the B real sequence lengths

    @property
    def num_sequences(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        """Tokens computed (real + tail padding)."""
        return int(self.input_ids.shape[1])

    @property
    def useful_tokens(self) -> int:
        return sum(self.lengths)

    def to(self, device: Any) -> PackedBatch:
        return PackedBatch(
            input_ids=self.input_ids.to(device, non_blocking=True),
            position_ids=self.position_ids.to(device, non_blocking=True),
            cu_seqlens=self.cu_seqlens.to(device, non_blocking=True),
            max_seqlen=self.max_seqlen,
            last_index=self.last_index.to(device, non_blocking=True),
            lengths=self.lengths,
        )

    def segment_bounds(self) -> list[int]:
        """``cu_seqlens`` as host integers, tail included, without a device sync: read from
        the tensor while it is on the CPU, else rebuilt from ``lengths`` (which ``pack`` and
        ``pack_padded`` keep consistent with it)."""
        if self.cu_seqlens.device.type == "cpu":
            return [int(x) for x in self.cu_seqlens.tolist()]
        bounds = [0]
        for n in self.lengths:
            bounds.append(bounds[-1] + n)
        if self.num_tokens > bounds[-1]:
            bounds.append(self.num_tokens)
        return bounds

    def attention_kwargs(self, backend: str = "auto") -> dict[str, Any]:
        """Keyword arguments that route a decoder layer's attention through the varlen path."""
        bounds = self.segment_bounds()
        return {
            "cu_seq_lens_q": self.cu_seqlens,
            "cu_seq_lens_k": self.cu_seqlens,
            "max_length_q": self.max_seqlen,
            "max_length_k": self.max_seqlen,
            "e5x_attn_backend": backend,
            "e5x_bounds": (bounds, bounds),  # host copy for the SDPA loop (no .tolist() sync)
        }


def pack(
    sequences: Sequence[Sequence[int]],
    *,
    pad_to_multiple_of: int | None = None,
    pad_id: int = 0,
) -> PackedBatch:
    """Pack token id lists into one stream (CPU tensors; move with ``.to(device)``).

    ``pad_to_multiple_of`` rounds the stream length up with a tail of ``pad_id`` tokens that
    form a segment of their own (never pooled, never attended to by real tokens); it keeps
    shapes stable for compiled kernels. Off by default: packing exists to avoid padding.
    """
    import torch

    if not sequences:
        raise ValueError("cannot pack an empty batch")
    lengths = []
    for i, seq in enumerate(sequences):
        if len(seq) == 0:
            raise ValueError(f"sequence {i} is empty; every sequence needs at least its EOS token")
        lengths.append(len(seq))
    total = sum(lengths)
    seg_lengths = list(lengths)
    if pad_to_multiple_of and pad_to_multiple_of > 1:
        tail = -total % pad_to_multiple_of
        if tail:
            seg_lengths.append(tail)
    stream = [int(t) for seq in sequences for t in seq]
    stream += [pad_id] * (sum(seg_lengths) - total)
    input_ids = torch.tensor(stream, dtype=torch.long).unsqueeze(0)
    position_ids = torch.cat([torch.arange(n, dtype=torch.long) for n in seg_lengths]).unsqueeze(0)
    cu = torch.zeros(len(seg_lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(seg_lengths, dtype=torch.int64), 0).to(torch.int32)
    last_index = cu[1 : len(lengths) + 1].to(torch.long) - 1
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        cu_seqlens=cu,
        max_seqlen=max(seg_lengths),
        last_index=last_index,
        lengths=lengths,
    )


def pack_padded(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> PackedBatch:
    """Pack an already padded batch (left or right padding) on its own device.

    ``input_ids[mask]`` is the packed stream in row order; one host sync reads the lengths.
    Lets a loop that collates padded tensors switch to packed forwards without re-collating.
    """
    import torch

    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
            "must be the same [batch, seq_len] shape"
        )
    mask = attention_mask.bool()
    lengths_t = mask.sum(1)
    lengths = lengths_t.tolist()
    if not lengths or min(lengths) == 0:
        raise ValueError("every row needs at least one token (its EOS) to be packed")
    stream = input_ids[mask].unsqueeze(0)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=input_ids.device)
    cu[1:] = torch.cumsum(lengths_t, 0).to(torch.int32)
    starts = torch.repeat_interleave(cu[:-1].long(), lengths_t, output_size=stream.shape[1])
    position_ids = (torch.arange(stream.shape[1], device=input_ids.device) - starts).unsqueeze(0)
    return PackedBatch(
        input_ids=stream,
        position_ids=position_ids,
        cu_seqlens=cu,
        max_seqlen=max(lengths),
        last_index=cu[1:].long() - 1,
        lengths=lengths,
    )


# ----------------------------------------------------------------------------- length grouping


def length_grouped_chunks(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices of the sequences of one step, sorted by length, cut into padded chunks whose
    padded size (rows x longest) stays within ``max_tokens``.

    The step's composition (and so its in-batch negatives) is unchanged; only the forward
    passes are regrouped, so each chunk pads to a length close to its members'. A single
    sequence longer than ``max_tokens`` still gets a chunk of its own.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    chunks: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = max(lengths[cur[0]], lengths[i]) if cur else lengths[i]  # sorted: cur[0] longest
        if cur and width * (len(cur) + 1) > max_tokens:
            chunks.append(cur)
            cur = []
        cur.append(i)
    if cur:
        chunks.append(cur)
    return chunks


def padding_share(lengths: Sequence[int], groups: Sequence[Sequence[int]] | None = None) -> float:
    """Share of computed tokens that are padding when each group pads to its longest."""
    groups = groups if groups is not None else [list(range(len(lengths)))]
    computed = sum(max(lengths[i] for i in g) * len(g) for g in groups if g)
    useful = sum(lengths[i] for g in groups for i in g)
    return 0.0 if computed == 0 else 1.0 - useful / computed


# ----------------------------------------------------------------------------- attention


@lru_cache(maxsize=1)
def _flash_attn_varlen() -> Callable | None:
    try:
        from flash_attn import flash_attn_varlen_func  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - a broken flash-attn install must not break packing
        return None
    return flash_attn_varlen_func


@lru_cache(maxsize=1)
def _torch_varlen() -> tuple[Callable, frozenset[str]] | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except Exception:  # noqa: BLE001 - torch < 2.9 has no varlen module
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def attention_backends() -> list[str]:
    """Varlen attention backends usable here, best first (CUDA ones need a GPU at call time)."""
    import torch

    out = []
    if torch.cuda.is_available():
        if _flash_attn_varlen() is not None:
            out.append("flash_attn")
        if _torch_varlen() is not None:
            out.append("torch_varlen")
    out.append("flex")
    out.append("sdpa_loop")
    return out


# (head_dim, query heads, key/value heads) the trial runs at when the model's is unknown:
# Mistral-7B's (128, GQA 32:8).
DEFAULT_ATTN_SHAPE = (128, 32, 8)


def attention_shape(model: Any) -> tuple[int, int, int]:
    """(head_dim, query heads, key/value heads) of a decoder (HF or peft-wrapped)."""
    cfg: Any = getattr(decoder_of(model) or hf_model(model), "config", None)
    heads = getattr(cfg, "num_attention_heads", None)
    if not heads:
        return DEFAULT_ATTN_SHAPE
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return int(head_dim), int(heads), int(getattr(cfg, "num_key_value_heads", None) or heads)


def resolve_backend(backend: str, device: torch.device, attn_shape: tuple[int, int, int] | None = None) -> str:
    """The backend ``auto`` stands for on ``device``: the first of flash-attn varlen and torch's
    own varlen flash kernel that passes a forward + backward trial against the exact
    per-sequence SDPA loop here (``_trial``, once per device and ``attn_shape`` = the model's
    (head_dim, query heads, key/value heads), default Mistral-7B's), else that loop.
    FlexAttention is only used when asked for: it is fast only under torch.compile, which
    recompiles as the stream length changes."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown packed attention backend {backend!r}; choose from {BACKENDS}")
    if backend != "auto":
        return backend
    if device.type != "cuda":
        return "sdpa_loop"
    return _auto_cuda_backend(str(device), tuple(attn_shape or DEFAULT_ATTN_SHAPE))


@cache
def _auto_cuda_backend(device: str, attn_shape: tuple[int, int, int] = DEFAULT_ATTN_SHAPE) -> str:
    import warnings

    for name, available in (("flash_attn", _flash_attn_varlen()), ("torch_varlen", _torch_varlen())):
        if available is None:
            continue
        problem = _trial(name, device, attn_shape)
        if problem is None:
            return name
        warnings.warn(
            f"e5x packed attention: backend {name!r} failed its trial on {device} ({problem}); trying the next one",
            stacklevel=2,
        )
    return "sdpa_loop"


def _trial(backend: str, device: str, attn_shape: tuple[int, int, int] = DEFAULT_ATTN_SHAPE) -> str | None:
    """None when ``backend`` matches the SDPA loop (values and gradients, bf16, the model's
    head_dim and GQA ratio, ragged segments incl. length 1, and the trimmed last layer's one
    query row per segment against all of its keys) on ``device``; else what went wrong."""
    import torch

    try:
        # Runs at most once per device and shape, from packed_hidden_at before any layer runs;
        # it may be called under no_grad (GradCache's first pass) or autocast: set both.
        with torch.enable_grad(), torch.autocast("cuda", enabled=False):
            return _trial_inner(backend, device, attn_shape)
    except Exception as exc:  # noqa: BLE001 - any failure means: do not use this backend
        return f"{type(exc).__name__}: {exc}"


def _trial_inner(backend: str, device: str, attn_shape: tuple[int, int, int] = DEFAULT_ATTN_SHAPE) -> str | None:
    import torch

    head_dim, hq, hkv = attn_shape
    g = torch.Generator(device=device).manual_seed(0)
    lengths = [5, 1, 37, 130]
    bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    cu = torch.tensor(bounds, dtype=torch.int32, device=device)
    t = sum(lengths)
    one = list(range(len(lengths) + 1))  # the trimmed last layer: one query row per segment
    cu_one = torch.tensor(one, dtype=torch.int32, device=device)

    def rand(n: int, h: int) -> torch.Tensor:
        return torch.randn(n, h, head_dim, device=device, generator=g).to(torch.bfloat16)

    scale = head_dim**-0.5
    cases = (  # (what, q rows, cu_q, host bounds of q, max_q, causal)
        ("", t, cu, bounds, max(lengths), True),
        ("trimmed last layer: ", len(lengths), cu_one, one, 1, False),
    )
    for label, tq, cu_q, bounds_q, max_q, causal in cases:
        q0, k0, v0 = rand(tq, hq), rand(t, hkv), rand(t, hkv)
        outs = []
        for name in (backend, "sdpa_loop"):
            q, k, v = (x.clone().requires_grad_(True) for x in (q0, k0, v0))
            o = varlen_attention(
                q,
                k,
                v,
                cu_q,
                cu,
                max_q,
                max(lengths),
                scale=scale,
                causal=causal,
                backend=name,
                bounds=(bounds_q, bounds),
            )
            o.float().square().sum().backward()
            outs.append([o.float(), q.grad.float(), k.grad.float(), v.grad.float()])  # type: ignore[union-attr]
        for what, a, b in zip(("out", "dq", "dk", "dv"), *outs):
            if not bool(torch.isfinite(a).all()):
                return f"{label}{what} is not finite"
            err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-6))
            if not err < 3e-2:  # bf16 kernels differ by ~1e-2 relative at most
                return f"{label}{what} differs from the SDPA loop by {err:.3g} (relative)"
    return None


_GQA_REPEAT_WARNED = False


def _warn_gqa_repeat(ratio: int) -> None:
    """An older torch's varlen_attn without enable_gqa: K/V are repeated (ratio x their memory
    and traffic per layer). Said once; flash-attn or a torch whose varlen_attn takes
    enable_gqa avoids it."""
    global _GQA_REPEAT_WARNED
    import warnings

    _GQA_REPEAT_WARNED = True
    warnings.warn(
        f"e5x packed attention: this torch's varlen_attn has no enable_gqa; keys and values are "
        f"repeated {ratio}x per layer (flash-attn, or a torch whose varlen_attn takes enable_gqa, "
        "avoids it)",
        stacklevel=3,
    )


def gqa_native(backend: str) -> bool | None:
    """Whether ``backend`` attends grouped K/V without repeating them (None: not a varlen kernel)."""
    if backend == "flash_attn":
        return True
    if backend == "torch_varlen":
        found = _torch_varlen()
        return None if found is None else "enable_gqa" in found[1]
    return None


def _low_precision(t: torch.Tensor) -> torch.Tensor:
    """Flash kernels take fp16/bf16 only: cast fp32 inputs to the autocast dtype (as SDPA
    under autocast would) or bf16."""
    import torch

    if t.dtype in (torch.float16, torch.bfloat16):
        return t
    if torch.is_autocast_enabled(t.device.type):
        return t.to(torch.get_autocast_dtype(t.device.type))
    return t.to(torch.bfloat16)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    max_q: int,
    max_k: int,
    *,
    scale: float,
    causal: bool = True,
    sliding_window: int | None = None,
    backend: str = "auto",
    bounds: tuple[Sequence[int], Sequence[int]] | None = None,
) -> torch.Tensor:
    """Attention of packed segments: q ``[Tq, Hq, D]``, k/v ``[Tk, Hkv, D]`` -> ``[Tq, Hq, D]``.

    Segment i of q attends only to segment i of k (causally, aligned bottom-right when the
    query segment is shorter, as flash-attention does). GQA (Hq a multiple of Hkv) is handled.
    ``sliding_window`` keeps keys with ``i - j < sliding_window`` (the Mistral convention).
    ``bounds``: ``(cu_q, cu_k)`` as host integers, when the caller has them; the SDPA loop
    then needs no device-to-host copy. Every key must lie in a segment (``Tk == cu_k[-1]``):
    varlen kernels leave keys past the last boundary undefined (NaN gradients in torch's).
    """
    import torch

    backend = resolve_backend(backend, q.device, (q.shape[-1], q.shape[1], k.shape[1]))
    hq, hkv = q.shape[1], k.shape[1]
    use_window = sliding_window is not None and max_k > sliding_window
    if backend == "flash_attn":
        fn = _flash_attn_varlen()
        if fn is None:
            raise RuntimeError("backend 'flash_attn' asked for but flash_attn is not installed")
        dtype = q.dtype
        window = (sliding_window - 1, 0) if use_window and sliding_window is not None else (-1, -1)
        q, k, v = (_low_precision(x).contiguous() for x in (q, k, v))
        out = fn(
            q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=scale, causal=causal, window_size=window
        )
        return out.to(dtype) if not torch.is_autocast_enabled(q.device.type) else out
    if backend == "torch_varlen":
        found = _torch_varlen()
        if found is None:
            raise RuntimeError("backend 'torch_varlen' needs torch.nn.attention.varlen (torch >= 2.9)")
        fn, params = found
        if use_window and "window_size" not in params:
            raise RuntimeError("this torch's varlen_attn has no sliding window; use flash_attn")
        if "enable_gqa" not in params and hq != hkv:
            if not _GQA_REPEAT_WARNED:
                _warn_gqa_repeat(hq // hkv)
            k = k.repeat_interleave(hq // hkv, dim=1)
            v = v.repeat_interleave(hq // hkv, dim=1)
        kwargs: dict[str, Any] = {}
        if "scale" in params:
            kwargs["scale"] = scale
        elif abs(scale * math.sqrt(q.shape[-1]) - 1.0) > 1e-6:
            q = q * (scale * math.sqrt(q.shape[-1]))  # torch 2.9 has no scale: fold it into q
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = hq != hkv
        if "window_size" in params:
            kwargs["window_size"] = (
                (sliding_window - 1, 0)
                if use_window and sliding_window is not None
                else ((-1, 0) if causal else (-1, -1))
            )
        else:  # torch 2.9/2.10 signature
            kwargs["is_causal"] = causal
        dtype = q.dtype
        q, k, v = (_low_precision(x).contiguous() for x in (q, k, v))
        out = fn(q, k, v, cu_q.to(torch.int32), cu_k.to(torch.int32), max_q, max_k, **kwargs)
        return out.to(dtype) if not torch.is_autocast_enabled(q.device.type) else out
    if backend == "flex":
        return _flex_attention(
            q, k, v, cu_q, cu_k, scale=scale, causal=causal, sliding_window=sliding_window if use_window else None
        )
    return _sdpa_loop(
        q,
        k,
        v,
        cu_q,
        cu_k,
        scale=scale,
        causal=causal,
        sliding_window=sliding_window if use_window else None,
        bounds=bounds,
    )


def _segment_mask(lq: int, lk: int, causal: bool, window: int | None, device: Any) -> Any:
    """Boolean [lq, lk] mask, bottom-right aligned (query i sits at key position lk - lq + i)."""
    import torch

    qpos = torch.arange(lk - lq, lk, device=device)[:, None]
    kpos = torch.arange(lk, device=device)[None, :]
    mask = torch.ones(lq, lk, dtype=torch.bool, device=device)
    if causal:
        mask &= kpos <= qpos
    if window is not None:
        mask &= qpos - kpos < window
    return mask


def _sdpa_loop(q, k, v, cu_q, cu_k, *, scale, causal, sliding_window, bounds=None):  # type: ignore[no-untyped-def]
    """Exact reference: one SDPA call per segment (any device, any dtype). A loop by nature
    (the fallback when no varlen kernel passed its trial); with host ``bounds`` it at least
    does not wait on the device for the segment boundaries."""
    import torch
    import torch.nn.functional as F

    bounds_q, bounds_k = (list(b) for b in bounds) if bounds is not None else (cu_q.tolist(), cu_k.tolist())
    outs = []
    for i in range(len(bounds_q) - 1):
        sq, eq, sk, ek = bounds_q[i], bounds_q[i + 1], bounds_k[i], bounds_k[i + 1]
        if eq == sq:
            continue
        qi = q[sq:eq].transpose(0, 1).unsqueeze(0)  # [1, Hq, lq, D]
        ki = k[sk:ek].transpose(0, 1).unsqueeze(0)
        vi = v[sk:ek].transpose(0, 1).unsqueeze(0)
        lq, lk = eq - sq, ek - sk
        mask = None
        is_causal = False
        if causal and lq == lk and sliding_window is None:
            is_causal = True
        elif causal or sliding_window is not None:
            mask = _segment_mask(lq, lk, causal, sliding_window, q.device)
        o = F.scaled_dot_product_attention(
            qi,
            ki,
            vi,
            attn_mask=mask,
            is_causal=is_causal,
            scale=scale,
            enable_gqa=qi.shape[1] != ki.shape[1],
        )
        outs.append(o.squeeze(0).transpose(0, 1))
    return torch.cat(outs, 0)


def _flex_attention(q, k, v, cu_q, cu_k, *, scale, causal, sliding_window):  # type: ignore[no-untyped-def]
    """FlexAttention with a document mask; block-sparse, so cross-segment blocks are skipped.
    Fast only when compiled (``FLEX_COMPILE``, on by default; E5X_FLEX_COMPILE=0/1 overrides
    it) on CUDA; eager is a slow reference."""
    import os

    from torch.nn.attention.flex_attention import flex_attention

    tq, tk = q.shape[0], k.shape[0]
    # One block mask per packed batch, not per layer: the layers (and the backward's
    # recomputes) pass the same cu_seqlens tensors, held here so their ids stay unique.
    key = (id(cu_q), id(cu_k), tq, tk, causal, sliding_window)
    for entry_key, held, mask in _FLEX_MASKS:
        if entry_key == key and held[0] is cu_q and held[1] is cu_k:
            block_mask = mask
            break
    else:
        block_mask = _flex_block_mask(q.device, cu_q, cu_k, tq, tk, causal, sliding_window)
        _FLEX_MASKS.insert(0, (key, (cu_q, cu_k), block_mask))
        del _FLEX_MASKS[4:]
    fn = flex_attention
    if q.is_cuda and os.environ.get("E5X_FLEX_COMPILE", "1" if FLEX_COMPILE else "0") == "1":
        fn = _compiled_flex()
    out = fn(
        q.transpose(0, 1).unsqueeze(0),
        k.transpose(0, 1).unsqueeze(0),
        v.transpose(0, 1).unsqueeze(0),
        block_mask=block_mask,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return out.squeeze(0).transpose(0, 1)


_FLEX_MASKS: list[tuple[Any, Any, Any]] = []


def _flex_block_mask(device, cu_q, cu_k, tq, tk, causal, sliding_window):  # type: ignore[no-untyped-def]
    import torch
    from torch.nn.attention.flex_attention import create_block_mask

    def doc_ids(cu: torch.Tensor, total: int, fill: int) -> torch.Tensor:
        # rows past cu[-1] (a stream tail no segment covers) get a document id of their own
        ids = torch.full((total,), fill, dtype=torch.long, device=device)
        n = int(cu[-1])
        ids[:n] = torch.repeat_interleave(
            torch.arange(len(cu) - 1, device=device), (cu[1:] - cu[:-1]).long(), output_size=n
        )
        return ids

    doc_q, doc_k = doc_ids(cu_q, tq, -1), doc_ids(cu_k, tk, -2)
    # Position inside the segment, bottom-right aligned like the other backends.
    len_q = (cu_q[1:] - cu_q[:-1]).long()
    len_k = (cu_k[1:] - cu_k[:-1]).long()
    dq, dk = doc_q.clamp(min=0), doc_k.clamp(min=0)
    pos_q = torch.arange(tq, device=device) - cu_q[:-1].long()[dq] + (len_k - len_q)[dq]
    pos_k = torch.arange(tk, device=device) - cu_k[:-1].long()[dk]

    def mask_mod(b, h, qi, ki):  # type: ignore[no-untyped-def]
        keep = doc_q[qi] == doc_k[ki]
        if causal:
            keep = keep & (pos_k[ki] <= pos_q[qi])
        if sliding_window is not None:
            keep = keep & (pos_q[qi] - pos_k[ki] < sliding_window)
        return keep

    return create_block_mask(mask_mod, None, None, tq, tk, device=device)


FLEX_COMPILE = True  # TrainConfig.flex_compile; see _flex_attention


@lru_cache(maxsize=1)
def _compiled_flex() -> Callable:
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def packed_attention_forward(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers ``AttentionInterface`` function: varlen attention over a packed stream when
    ``cu_seq_lens_q`` is given, transformers' SDPA otherwise (padded batches keep working)."""
    cu_q = kwargs.get("cu_seq_lens_q")
    if cu_q is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            sliding_window=sliding_window,
            **kwargs,
        )
    if query.shape[0] != 1:
        raise ValueError(f"a packed stream has batch size 1, got query of shape {tuple(query.shape)}")
    if dropout:
        raise ValueError("attention dropout is not supported on packed batches")
    cu_k = kwargs.get("cu_seq_lens_k", cu_q)
    max_q = int(kwargs["max_length_q"])
    max_k = int(kwargs.get("max_length_k", max_q))
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    out = varlen_attention(
        query[0].transpose(0, 1),
        key[0].transpose(0, 1),
        value[0].transpose(0, 1),
        cu_q,
        cu_k,
        max_q,
        max_k,
        scale=scale,
        causal=bool(getattr(module, "is_causal", True)),
        sliding_window=sliding_window,
        backend=kwargs.get("e5x_attn_backend", "auto"),
        bounds=kwargs.get("e5x_bounds"),
    )
    return out.unsqueeze(0), None  # [1, T, Hq, D], the layout transformers expects


def register_packed_attention() -> str:
    """Register the packed attention (and SDPA's mask builder) with transformers under
    ``ATTN_IMPLEMENTATION``; idempotent."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, packed_attention_forward)
    try:
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    except ImportError:  # older transformers: masks are built per implementation name
        pass
    return ATTN_IMPLEMENTATION


def enable_packing(model: Any) -> Any:
    """Switch ``model`` (HF or peft-wrapped) to the packed attention. Padded forwards still
    run (through SDPA); packed ones go through ``embed_packed``. Returns the model."""
    name = register_packed_attention()
    target = hf_model(model)
    setter = getattr(target, "set_attn_implementation", None)
    if setter is not None:
        try:
            setter(name)
            return model
        except Exception:  # noqa: BLE001, S110 - older transformers refuse unknown names
            pass  # ... so set the implementation on the config directly below
    config = target.config
    config._attn_implementation = name
    for sub in (getattr(config, "text_config", None),):
        if sub is not None:
            sub._attn_implementation = name
    return model


def is_packing_enabled(model: Any) -> bool:
    target = hf_model(model)
    return getattr(target.config, "_attn_implementation", None) == ATTN_IMPLEMENTATION


# ----------------------------------------------------------------------------- forward + pooling


def hf_model(model: Any) -> Any:
    """The transformers model inside DDP (``.module``) and peft (``get_base_model``) wrappers."""
    import torch

    while isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_of(model: Any) -> Any:
    """The bare decoder (``embed_tokens``, ``layers``, ``norm``, ``rotary_emb``) inside an HF or
    peft model, or None when the model does not have that (Llama/Mistral/Qwen2) structure."""
    m = hf_model(model)
    for _ in range(3):
        if all(hasattr(m, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
            return m
        m = getattr(m, "model", None)
        if m is None:
            return None
    return None


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
        raise RuntimeError("call e5x.model.packing.enable_packing(model) before packed forwards")
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


def embed_packed(
    model: Any,
    sequences: Sequence[Sequence[int]],
    *,
    pooling: str = "last_token",
    normalize: bool = False,
    backend: str = "auto",
    trim_last_layer: bool = True,
    pad_to_multiple_of: int | None = None,
) -> torch.Tensor:
    """Pooled embeddings ``[B, H]`` (input order) of token id lists, from one packed forward.

    The drop-in for a padded forward + pooling: the same sequences give the same embeddings
    (``embed_padded``) up to rounding. ``normalize`` L2-normalises (the InfoNCE op
    normalises itself, so training leaves it off).
    """
    packed = pack(sequences, pad_to_multiple_of=pad_to_multiple_of)
    pooled = packed_hidden_at(model, packed, pooling=pooling, backend=backend, trim_last_layer=trim_last_layer)
    if normalize:
        import torch.nn.functional as F

        pooled = F.normalize(pooled.float(), dim=-1).to(pooled.dtype)
    return pooled


def embed_packed_inputs(
    model: Any,
    inputs: dict[str, torch.Tensor],
    *,
    pooling: str = "last_token",
    backend: str = "auto",
    trim_last_layer: bool = True,
) -> torch.Tensor:
    """``embed_packed`` for a padded ``{"input_ids", "attention_mask"}`` batch (any padding
    side): the drop-in for ``e5x.training.step.embed`` once ``enable_packing(model)`` ran, so it
    returns float32 like that function (the pooled rows are few; the cast is free)."""
    packed = pack_padded(inputs["input_ids"], inputs["attention_mask"])
    return packed_hidden_at(model, packed, pooling=pooling, backend=backend, trim_last_layer=trim_last_layer).float()


def embed_padded(
    model: Any,
    sequences: Sequence[Sequence[int]],
    *,
    pooling: str = "last_token",
    pad_id: int = 0,
    padding_side: str = "right",
    normalize: bool = False,
) -> torch.Tensor:
    """The padded reference: one padded forward and ``pooling``, ``[B, H]``."""
    import torch.nn.functional as F

    from e5x.model.pooling import get_pooling
    from e5x.model.text import pad

    device = next(model.parameters()).device
    ids, mask = pad(sequences, pad_id, padding_side)  # type: ignore[arg-type]
    ids, mask = ids.to(device), mask.to(device)
    out = model(input_ids=ids, attention_mask=mask, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    pooled = get_pooling(pooling).pool(hidden, mask)
    return F.normalize(pooled.float(), dim=-1).to(pooled.dtype) if normalize else pooled


def embed_length_grouped(
    model: Any,
    sequences: Sequence[Sequence[int]],
    *,
    max_tokens: int = 16384,
    pooling: str = "last_token",
    pad_id: int = 0,
    padding_side: str = "right",
    normalize: bool = False,
) -> torch.Tensor:
    """Padded forwards over length-sorted chunks (``length_grouped_chunks``), pooled rows put
    back in input order: the fallback when packing is off. Same batch, less padding."""
    import torch

    chunks = length_grouped_chunks([len(s) for s in sequences], max_tokens)
    parts = [
        embed_padded(
            model,
            [sequences[i] for i in c],
            pooling=pooling,
            pad_id=pad_id,
            padding_side=padding_side,
            normalize=normalize,
        )
        for c in chunks
    ]
    order = torch.tensor([i for c in chunks for i in c], device=parts[0].device)
    return torch.cat(parts, 0)[torch.argsort(order)]
