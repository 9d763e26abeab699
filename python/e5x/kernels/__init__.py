"""Fused last-token pooling + L2 normalisation + temperature-scaled InfoNCE.

Public API:

- ``last_token_pool(hidden, attention_mask=None, *, last_index=None, normalize=False,
  backend="auto")`` -> [B, H]
- ``info_nce(q, d, positive_index=None, *, positive_offset=0, temperature=0.02,
  normalize=True, reduction="mean", q_groups=None, d_groups=None, backend="auto")`` -> loss
- ``pooled_info_nce(q_hidden, d_hidden, q_mask=None, d_mask=None, *, q_last_index=None,
  d_last_index=None, positive_index=None, positive_offset=0, temperature=0.02,
  reduction="mean", return_embeddings=False, q_groups=None, d_groups=None,
  backend="auto")`` -> loss (or ``(loss, q_emb, d_emb)`` with ``return_embeddings=True``)
- ``count_false_negatives(q_groups, d_groups, positive)`` -> how many (query, document)
  pairs the masking below removes

``backend="auto"`` runs the Triton kernels (``triton_pooled_info_nce.py``) on CUDA tensors when
triton imports and the torch reference (``reference.py``) otherwise; ``"triton"`` forces the
kernels (on CPU only under ``TRITON_INTERPRET=1``), ``"torch"`` the reference. Triton is
imported only when the Triton path is first used.

Document layout: without ``positive_index`` documents come grouped per query,
``[pos_0, negs_0..., pos_1, negs_1..., extra...]``, query i's positive at ``i * group_size``
(``group_size`` defaults to ``Bd // Bq``), plus ``positive_offset``. Every document that is
not a query's positive is a negative for it (in-batch, hard and cross-rank negatives alike),
except false negatives: with ``q_groups`` ([Bq] or [Bq, 2] integer ids per query, e.g. hashes
of its positive's text and its own) and ``d_groups`` ([Bd], one per document), document j is
left out of query i's softmax when d_groups[j] >= 0 equals one of q_groups[i] and j is not
i's positive. The loss is float32 (float64 for float64 inputs).

Knobs of the Triton path (see kernels/TUNING.md in the repository), each a keyword argument
of ``info_nce`` / ``pooled_info_nce``, a process default (``configure(mode=..., chunk_mib=...,
autotune=...)``; ``e5x.train`` sets it from ``TrainConfig``) and an environment override for
benchmarks (argument > environment > configure); ``runtime_info()`` reports the effective
values and what ran (GEMM path, fallbacks):
``autotune`` / ``E5X_AUTOTUNE=0`` (first tile config, no tuning pass), ``mode`` / ``E5X_INFONCE_MODE`` (``fused``:
mean/sum gradients formed in the forward, 3 GEMMs; ``lean``: the same without the fp32
[Bd, H] document-gradient accumulator, 4 GEMMs, memory = returned gradients + chunk budget;
``auto``, the default: fused unless its accumulator would take more than half of the
available device memory, then lean; ``backward``: recompute scores in backward), ``chunk_mib`` /
``E5X_INFONCE_CHUNK_MIB`` (memory budget of the gradient chunks, default 1024). Value checks
of indices and masks read the device back once per call on CPU and run as device-side
asserts on CUDA (no host sync; ``E5X_KERNEL_CHECKS=sync`` for the detailed error).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _checks as C
from ._settings import KernelSettings, configure, runtime_info
from ._settings import override as _override

if TYPE_CHECKING:
    import torch

__all__ = [
    "KernelSettings",
    "configure",
    "count_false_negatives",
    "info_nce",
    "last_token_index",
    "last_token_pool",
    "pooled_info_nce",
    "runtime_info",
]


def count_false_negatives(q_groups: torch.Tensor, d_groups: torch.Tensor, positive: torch.Tensor) -> int:
    """Number of (query, document) pairs the false-negative mask removes (see module doc);
    ``positive`` holds each query's absolute positive column. O((Bq + Bd) log Bd) memory-light."""
    from .reference import count_false_negatives as count

    groups = C.resolve_groups(positive.shape[0], d_groups.shape[0], d_groups.device, q_groups, d_groups)
    assert groups is not None
    return int(count(groups[0], groups[1], positive))


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Highest position whose mask is 1 in every row (left or right padding), int64; an
    all-zero row is a ValueError."""
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be [batch, seq_len], got {tuple(attention_mask.shape)}")
    return C.resolve_last_index("input", _Shape(attention_mask), attention_mask, None)  # type: ignore[arg-type]


class _Shape:
    """Stand-in with the shape/device of hidden states, for checking a mask alone."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.shape = (mask.shape[0], mask.shape[1], 1)
        self.device = mask.device


def last_token_pool(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    last_index: torch.Tensor | None = None,
    normalize: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """hidden[b, last[b], :] -> [B, H], last = highest position with mask 1 (or last_index).

    Differentiable; the gradient of ``hidden`` is zero except at the pooled positions.
    With ``normalize=True`` rows are L2-normalised (norm computed in fp32). The result has
    hidden's dtype.
    """
    C.check_hidden("hidden", hidden)
    idx = C.resolve_last_index("hidden", hidden, attention_mask, last_index)  # syncs once
    if C.pick_backend(backend, hidden) == "torch":
        from .reference import last_token_pool_ref

        return last_token_pool_ref(hidden, idx, normalize=normalize)
    from .triton_pooled_info_nce import last_token_pool_triton

    return last_token_pool_triton(hidden, idx, normalize=normalize)


def info_nce(
    q: torch.Tensor,
    d: torch.Tensor,
    positive_index: torch.Tensor | None = None,
    *,
    positive_offset: int = 0,
    temperature: float = 0.02,
    normalize: bool = True,
    reduction: str = "mean",
    group_size: int | None = None,
    q_groups: torch.Tensor | None = None,
    d_groups: torch.Tensor | None = None,
    backend: str = "auto",
    mode: str | None = None,
    chunk_mib: float | None = None,
    autotune: bool | None = None,
) -> torch.Tensor:
    """InfoNCE of queries q [Bq, H] against documents d [Bd, H].

    loss_i = logsumexp_j(s_ij) - s_i,pos(i), s_ij = cos(q_i, d_j) / temperature (plain dot
    products with ``normalize=False``). ``reduction``: "mean" (default), "sum" or "none"
    (per-query losses [Bq]). ``group_size`` (an e5x extension, keyword only) sets the
    documents per query of the grouped layout when it cannot be inferred. ``q_groups`` /
    ``d_groups`` mask false negatives (module doc). ``mode`` / ``chunk_mib`` / ``autotune``:
    the Triton path's knobs for this call (module doc; None = the process setting).
    """
    C.check_embeddings("q", q)
    C.check_embeddings("d", d)
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"q and d hidden sizes differ: q {tuple(q.shape)}, d {tuple(d.shape)}")
    if q.dtype != d.dtype:
        raise TypeError(f"q and d dtypes differ: {q.dtype} vs {d.dtype}")
    if q.device != d.device:
        raise ValueError(f"q and d are on different devices: {q.device} vs {d.device}")
    t = C.check_temperature(temperature)
    C.check_reduction(reduction)
    pos = C.resolve_positive(q.shape[0], d.shape[0], q.device, positive_index, positive_offset, group_size)
    groups = C.resolve_groups(q.shape[0], d.shape[0], q.device, q_groups, d_groups)
    if C.pick_backend(backend, q) == "torch":
        from .reference import info_nce_ref

        qg, dg = groups if groups is not None else (None, None)
        return info_nce_ref(q, d, pos, t, normalize=normalize, reduction=reduction, q_groups=qg, d_groups=dg)
    from .triton_pooled_info_nce import info_nce_triton

    with _override(mode=mode, chunk_mib=chunk_mib, autotune=autotune):
        return info_nce_triton(q, d, pos, t, normalize=normalize, reduction=reduction, groups=groups)


def pooled_info_nce(
    q_hidden: torch.Tensor,
    d_hidden: torch.Tensor,
    q_mask: torch.Tensor | None = None,
    d_mask: torch.Tensor | None = None,
    *,
    q_last_index: torch.Tensor | None = None,
    d_last_index: torch.Tensor | None = None,
    positive_index: torch.Tensor | None = None,
    positive_offset: int = 0,
    temperature: float = 0.02,
    reduction: str = "mean",
    return_embeddings: bool = False,
    group_size: int | None = None,
    q_groups: torch.Tensor | None = None,
    d_groups: torch.Tensor | None = None,
    backend: str = "auto",
    mode: str | None = None,
    chunk_mib: float | None = None,
    autotune: bool | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused op: last-token pooling + L2 normalisation + InfoNCE, forward and backward.

    q_hidden [Bq, Lq, H], d_hidden [Bd, Ld, H] (bf16/fp16/fp32/fp64); masks or last indices
    as in ``last_token_pool``. Gradients of the hidden states are zero except at the pooled
    positions. ``return_embeddings=True`` also returns the normalised embeddings
    (hidden's dtype; differentiable). ``q_groups`` / ``d_groups`` mask false negatives.
    ``mode`` / ``chunk_mib`` / ``autotune``: the Triton path's knobs for this call (module doc).
    """
    C.check_hidden("q_hidden", q_hidden)
    C.check_hidden("d_hidden", d_hidden)
    if q_hidden.shape[2] != d_hidden.shape[2]:
        raise ValueError(
            f"q_hidden and d_hidden hidden sizes differ: {tuple(q_hidden.shape)} vs {tuple(d_hidden.shape)}"
        )
    if q_hidden.dtype != d_hidden.dtype:
        raise TypeError(f"q_hidden and d_hidden dtypes differ: {q_hidden.dtype} vs {d_hidden.dtype}")
    if q_hidden.device != d_hidden.device:
        raise ValueError(f"q_hidden and d_hidden are on different devices: {q_hidden.device} vs {d_hidden.device}")
    t = C.check_temperature(temperature)
    C.check_reduction(reduction)
    pending: C.Pending = []  # value checks of all three, read back with one sync
    q_idx = C.resolve_last_index("q", q_hidden, q_mask, q_last_index, pending)
    d_idx = C.resolve_last_index("d", d_hidden, d_mask, d_last_index, pending)
    pos = C.resolve_positive(
        q_hidden.shape[0],
        d_hidden.shape[0],
        q_hidden.device,
        positive_index,
        positive_offset,
        group_size,
        pending,
    )
    C.flush(pending)
    groups = C.resolve_groups(q_hidden.shape[0], d_hidden.shape[0], q_hidden.device, q_groups, d_groups)
    q_emb: torch.Tensor | None
    d_emb: torch.Tensor | None
    if C.pick_backend(backend, q_hidden) == "torch":
        from .reference import pooled_info_nce_ref

        qg, dg = groups if groups is not None else (None, None)
        loss, q_emb, d_emb = pooled_info_nce_ref(
            q_hidden, d_hidden, q_idx, d_idx, pos, t, reduction, q_groups=qg, d_groups=dg
        )
    else:
        from .triton_pooled_info_nce import pooled_info_nce_triton

        with _override(mode=mode, chunk_mib=chunk_mib, autotune=autotune):
            loss, q_emb, d_emb = pooled_info_nce_triton(
                q_hidden,
                d_hidden,
                q_idx,
                d_idx,
                pos,
                t,
                reduction,
                want_embeddings=return_embeddings,
                groups=groups,
            )
    if not return_embeddings:
        return loss
    assert q_emb is not None and d_emb is not None  # want_embeddings=True
    return loss, q_emb, d_emb
