"""Torch reference for last-token pooling, L2 normalisation and InfoNCE.

This file is the spec of the op (the Triton kernels in ``triton_pooled_info_nce.py`` must agree
with it) and the fallback wherever Triton is unavailable. It materialises the full
Bq x Bd score matrix, so its memory is O(Bq * Bd); use it on CPU and for checking.

All functions here take *validated* arguments (see ``_checks.py``); the public entry
points in ``e5x.kernels`` validate before dispatching.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

# F.normalize's default; the Triton path uses the same clamp on the norm.
NORM_EPS = 1e-12


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the highest position whose mask is 1, per row (-1 for an all-zero row).

    Works for left padding (last index = L-1) and right padding (last index = length-1)
    alike, and for masks with holes (packed or odd collators): the highest 1 wins.
    """
    mask = attention_mask.bool()
    positions = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask, positions, -1).amax(dim=1)


def last_token_pool_ref(hidden: torch.Tensor, last_index: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """hidden[b, last_index[b], :] for every row b; L2-normalised (in fp32) if asked.

    The result keeps the dtype of ``hidden``; normalisation is computed in float32 (or
    float64 for float64 input) and cast back, as the kernels do.
    """
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    pooled = hidden[rows, last_index.to(hidden.device).long()]
    if normalize:
        work = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        pooled = F.normalize(pooled.to(work), dim=-1, eps=NORM_EPS).to(hidden.dtype)
    return pooled


def false_negative_mask(q_groups: torch.Tensor, d_groups: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """[Bq, Bd] bool, True where document j is left out of query i's negatives.

    ``q_groups`` [Bq, K] holds each query's group ids (e.g. the hashes of its positive's and
    its own text), ``d_groups`` [Bd] each document's. Document j is masked for query i when
    d_groups[j] is one of q_groups[i] and j is not i's positive; negative ids match nothing
    (padding: "no group").
    """
    qg = q_groups.reshape(q_groups.shape[0], -1).to(d_groups.device)
    hit = ((d_groups[None, :, None] == qg[:, None, :]) & (qg[:, None, :] >= 0)).any(-1)
    hit &= d_groups[None, :] >= 0
    rows = torch.arange(qg.shape[0], device=hit.device)
    hit[rows, positive.to(hit.device).long()] = False
    return hit


def count_false_negatives(q_groups: torch.Tensor, d_groups: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """``false_negative_mask(...).sum()`` without the [Bq, Bd] matrix: per distinct id of a
    query, the number of documents carrying it (binary search in the sorted ids), less the
    positive when it matches. int64 scalar tensor on d_groups' device."""
    qg = q_groups.reshape(q_groups.shape[0], -1).to(d_groups.device).long()
    ids = torch.sort(d_groups[d_groups >= 0].long()).values
    total = torch.zeros((), dtype=torch.int64, device=d_groups.device)
    for k in range(qg.shape[1]):
        g = qg[:, k]
        fresh = g >= 0
        for earlier in range(k):  # an id listed twice for a query counts once
            fresh &= g != qg[:, earlier]
        n = torch.searchsorted(ids, g, right=True) - torch.searchsorted(ids, g, right=False)
        total += (n * fresh).sum()
    pos_id = d_groups[positive.to(d_groups.device).long()].long()
    total -= ((qg == pos_id[:, None]).any(-1) & (pos_id >= 0)).sum()
    return total


def info_nce_ref(
    q: torch.Tensor,
    d: torch.Tensor,
    positive: torch.Tensor,
    temperature: float,
    normalize: bool = True,
    reduction: str = "mean",
    q_groups: torch.Tensor | None = None,
    d_groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of softmax(q . d^T / temperature) against the absolute positive indices.

    ``positive[i]`` is the column of query i's positive among all Bd documents; every other
    document is a negative for it, except those ``false_negative_mask(q_groups, d_groups,
    positive)`` removes (given both). Scores and the loss are computed in float32 (float64
    for float64 inputs); the returned loss is float32 (float64).
    """
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    # A caller's autocast would run the matmul in bf16: the spec computes in `work`.
    off = torch.autocast(q.device.type, enabled=False) if q.device.type in ("cuda", "cpu") else nullcontext()
    with off:
        qf, df = q.to(work), d.to(work)
        if normalize:
            qf = F.normalize(qf, dim=-1, eps=NORM_EPS)
            df = F.normalize(df, dim=-1, eps=NORM_EPS)
        logits = (qf @ df.T) / temperature
        if q_groups is not None and d_groups is not None:
            logits = logits.masked_fill(false_negative_mask(q_groups, d_groups, positive), float("-inf"))
        return F.cross_entropy(logits, positive.to(q.device).long(), reduction=reduction)


def pooled_info_nce_ref(
    q_hidden: torch.Tensor,
    d_hidden: torch.Tensor,
    q_last: torch.Tensor,
    d_last: torch.Tensor,
    positive: torch.Tensor,
    temperature: float,
    reduction: str = "mean",
    q_groups: torch.Tensor | None = None,
    d_groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pool the last tokens, L2-normalise them, InfoNCE. Returns (loss, q_emb, d_emb)."""
    # The loss sees the pooled rows normalised in fp32 (not rounded back to bf16 first), as
    # the kernels do; the returned embeddings are in the hidden states' dtype.
    q_raw = last_token_pool_ref(q_hidden, q_last)
    d_raw = last_token_pool_ref(d_hidden, d_last)
    loss = info_nce_ref(
        q_raw, d_raw, positive, temperature, normalize=True, reduction=reduction, q_groups=q_groups, d_groups=d_groups
    )
    q = last_token_pool_ref(q_hidden, q_last, normalize=True)
    d = last_token_pool_ref(d_hidden, d_last, normalize=True)
    return loss, q, d
