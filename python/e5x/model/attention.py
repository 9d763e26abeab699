"""Varlen attention over a packed stream (``e5x.model.packing``), registered with transformers.

Backends (``BACKENDS``): flash-attn's varlen kernel, torch's own varlen flash kernel,
FlexAttention with a document mask and an exact per-segment SDPA loop that runs anywhere;
``resolve_backend`` says which one ``auto`` stands for on a device, by a trial against the loop.

The attention is an ``AttentionInterface`` function registered with transformers under
``ATTN_IMPLEMENTATION``. It reads the boundaries from the ``cu_seq_lens_q/k`` and
``max_length_q/k`` keyword arguments (the names transformers' own flash-attention path uses)
and falls back to plain SDPA when they are absent, so a model switched to it by
``enable_packing`` still runs ordinary padded batches (evaluation, the Embedder).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

from e5x.model.unwrap import decoder_of, hf_model

if TYPE_CHECKING:
    import torch

ATTN_IMPLEMENTATION = "e5x_packed"
BACKENDS = ("auto", "flash_attn", "torch_varlen", "flex", "sdpa_loop")


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
