"""Argument checks shared by both backends: bad input fails here with a clear message.

Checks on tensor *values* (all-zero mask rows, out-of-range indices) need the device's
answer. Each resolve_* function takes an optional ``pending`` list; the entry points collect
every value check there and ``flush`` reads them back with a single host sync per call
(a few microseconds), worth a clear error instead of a silent wrong loss or an illegal
memory access inside a kernel. Without ``pending`` a check syncs on its own.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch

from .reference import last_token_index

# (device boolean tensor "row is bad", builds the exception from it)
Pending = list[tuple[torch.Tensor, Callable[[torch.Tensor], Exception]]]


VALUE_CHECK_MODES = ("auto", "sync", "async")


def value_checks(x: torch.Tensor) -> str:
    """How value checks run for tensors like x: "sync" (read back, a clear error; one host
    sync per call) or "async" (``torch._assert_async``: no host sync, a bad value stops the
    device at its next sync with a generic message). E5X_KERNEL_CHECKS=sync|async|auto;
    auto = async on CUDA (the op's 0.6 ms budget has no room for a sync), sync elsewhere."""
    mode = os.environ.get("E5X_KERNEL_CHECKS", "auto") or "auto"
    if mode not in VALUE_CHECK_MODES:
        raise ValueError(f"E5X_KERNEL_CHECKS must be one of {VALUE_CHECK_MODES}, got {mode!r}")
    if mode == "auto":
        return "async" if x.is_cuda else "sync"
    return mode


ASYNC_MESSAGE = (
    "e5x.kernels: an index or mask value is out of range (all-zero mask row, pooled "
    "position or positive outside its range); rerun with E5X_KERNEL_CHECKS=sync for "
    "the row and value"
)


def _check(pending: Pending | None, bad: torch.Tensor, error: Callable[[torch.Tensor], Exception]) -> None:
    if pending is None:
        if value_checks(bad) == "async":
            torch._assert_async(~bad.any(), ASYNC_MESSAGE)
        elif bool(bad.any()):
            raise error(bad)
    else:
        pending.append((bad, error))


def flush(pending: Pending) -> None:
    """Run the collected value checks with one device->host transfer (or none, see
    ``value_checks``); raise the first failure."""
    if not pending:
        return
    if value_checks(pending[0][0]) == "async":
        ok = ~torch.stack([bad.any() for bad, _ in pending]).any()
        torch._assert_async(ok, ASYNC_MESSAGE)
        return
    flags = torch.stack([bad.any() for bad, _ in pending]).cpu()
    for ok_flag, (bad, error) in zip(flags.tolist(), pending):
        if ok_flag:
            raise error(bad)


BACKENDS = ("auto", "triton", "torch")
REDUCTIONS = ("mean", "sum", "none")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_temperature(temperature: float) -> float:
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise TypeError(f"temperature must be a positive number, got {temperature!r}") from None
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


def check_hidden(name: str, hidden: torch.Tensor) -> None:
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(hidden).__name__}")
    if hidden.dim() != 3:
        raise ValueError(f"{name} must be [batch, seq_len, hidden], got shape {tuple(hidden.shape)}")
    if hidden.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor, got {hidden.dtype}")
    b, seq, h = hidden.shape
    if b == 0 or seq == 0 or h == 0:
        raise ValueError(f"{name} has an empty dimension: shape {tuple(hidden.shape)}")


def check_embeddings(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be [batch, hidden], got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor, got {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} has an empty dimension: shape {tuple(x.shape)}")


def resolve_last_index(
    name: str,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor | None,
    last_index: torch.Tensor | None,
    pending: Pending | None = None,
) -> torch.Tensor:
    """The pooled position of every row as int64 on hidden's device, checked.

    ``last_index`` wins over the mask when both are given; neither means every sequence
    fills the whole length (position L-1).
    """
    b, seq, _ = hidden.shape
    if last_index is not None:
        if not isinstance(last_index, torch.Tensor):
            last_index = torch.as_tensor(last_index)
        if last_index.dtype.is_floating_point or last_index.dtype == torch.bool:
            raise TypeError(f"{name} last_index must be an integer tensor, got {last_index.dtype}")
        if tuple(last_index.shape) != (b,):
            raise ValueError(f"{name} last_index must have shape [{b}] (one per row), got {tuple(last_index.shape)}")
        idx = last_index.to(device=hidden.device, dtype=torch.int64)

        def out_of_range(bad: torch.Tensor) -> Exception:
            row = int(bad.nonzero()[0, 0])
            return ValueError(f"{name} last_index[{row}] = {int(idx[row])} is outside [0, {seq}) (seq_len {seq})")

        _check(pending, (idx < 0) | (idx >= seq), out_of_range)
        return idx
    if attention_mask is None:
        return torch.full((b,), seq - 1, dtype=torch.int64, device=hidden.device)
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"{name} attention_mask must be a torch.Tensor")
    if tuple(attention_mask.shape) != (b, seq):
        raise ValueError(
            f"{name} attention_mask must have shape {(b, seq)} to match hidden states "
            f"{tuple(hidden.shape)}, got {tuple(attention_mask.shape)}"
        )
    idx = last_token_index(attention_mask.to(hidden.device))

    def all_zero(empty: torch.Tensor) -> Exception:
        rows = empty.nonzero()[:, 0].tolist()
        shown = ", ".join(map(str, rows[:8])) + (" ..." if len(rows) > 8 else "")
        return ValueError(
            f"{name} attention_mask has {len(rows)} all-zero row(s) (rows {shown}): "
            "every sequence needs at least one real token to pool"
        )

    _check(pending, idx < 0, all_zero)
    return idx


def resolve_positive(
    bq: int,
    bd: int,
    device: torch.device,
    positive_index: torch.Tensor | None,
    positive_offset: int,
    group_size: int | None,
    pending: Pending | None = None,
) -> torch.Tensor:
    """Absolute column of every query's positive among the Bd documents, checked, int64.

    Without ``positive_index`` documents come grouped per query as
    [pos_0, negs_0..., pos_1, negs_1..., (extra documents)]: positive i sits at
    i * group_size, where group_size defaults to Bd // Bq when positive_offset is 0.
    ``positive_offset`` is then added (this rank's first document among documents
    gathered from all ranks).
    """
    if isinstance(positive_offset, bool) or not isinstance(positive_offset, int):
        try:
            positive_offset = int(positive_offset)  # numpy / 0-dim tensor ints
        except (TypeError, ValueError):
            raise TypeError(f"positive_offset must be an int, got {positive_offset!r}") from None
    if positive_offset < 0:
        raise ValueError(f"positive_offset must be >= 0, got {positive_offset}")
    if positive_index is None:
        if group_size is None:
            if positive_offset != 0:
                raise ValueError(
                    "positive_offset without positive_index needs group_size (documents per "
                    "query on this rank) or an explicit positive_index: the grouped layout "
                    "cannot be inferred from documents gathered from several ranks"
                )
            if bd < bq:
                raise ValueError(
                    f"grouped layout needs at least one document per query: {bq} queries, "
                    f"{bd} documents (pass positive_index for another layout)"
                )
            group_size = bd // bq
        if int(group_size) < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        last = (bq - 1) * int(group_size) + positive_offset
        if last >= bd:  # known on the host: no device check needed
            row = max(0, (bd - positive_offset + int(group_size) - 1) // int(group_size))
            raise ValueError(
                f"positive of query {row} is document {row * int(group_size) + positive_offset} "
                f"(grouped layout, group_size {group_size}, positive_offset {positive_offset}), "
                f"outside the {bd} documents"
            )
        return torch.arange(bq, device=device, dtype=torch.int64) * int(group_size) + positive_offset
    else:
        if not isinstance(positive_index, torch.Tensor):
            positive_index = torch.as_tensor(positive_index)
        if positive_index.dtype.is_floating_point or positive_index.dtype == torch.bool:
            raise TypeError(f"positive_index must be an integer tensor, got {positive_index.dtype}")
        if tuple(positive_index.shape) != (bq,):
            raise ValueError(
                f"positive_index must have shape [{bq}] (one per query), got {tuple(positive_index.shape)}"
            )
        pos = positive_index.to(device=device, dtype=torch.int64)
    pos = pos + positive_offset

    def out_of_range(bad: torch.Tensor) -> Exception:
        row = int(bad.nonzero()[0, 0])
        return ValueError(
            f"positive of query {row} is document {int(pos[row])} (positive_index + "
            f"positive_offset {positive_offset}), outside the {bd} documents"
        )

    _check(pending, (pos < 0) | (pos >= bd), out_of_range)
    return pos


def triton_usable(x: torch.Tensor) -> bool:
    """True when the Triton path can run on tensors like x (importable + CUDA or interpreter)."""
    if not (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        return False
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def pick_backend(backend: str, x: torch.Tensor) -> str:
    """'auto' -> Triton on CUDA tensors when Triton imports, torch otherwise."""
    check_backend(backend)
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if x.is_cuda and triton_usable(x) else "torch"
    if not triton_usable(x):
        try:
            import triton  # noqa: F401
        except Exception as exc:
            raise RuntimeError(f"backend='triton' but triton cannot be imported: {exc}") from exc
        raise RuntimeError(
            f"backend='triton' needs CUDA tensors (got {x.device}) or TRITON_INTERPRET=1 "
            "set before e5x.kernels is first used"
        )
    return "triton"


def resolve_groups(
    bq: int, bd: int, device: torch.device, q_groups: torch.Tensor | None, d_groups: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """False-negative group ids as (q [Bq, 2], d [Bd]) int64 on ``device``, or None.

    ``q_groups`` may be [Bq] or [Bq, K] with K <= 2 (the kernels compare two ids per query);
    missing columns are filled with -1, which matches nothing.
    """
    if q_groups is None and d_groups is None:
        return None
    if q_groups is None or d_groups is None:
        raise ValueError("give both q_groups and d_groups (false-negative masking) or neither")
    out = []
    for name, g in (("q_groups", q_groups), ("d_groups", d_groups)):
        if not isinstance(g, torch.Tensor):
            g = torch.as_tensor(g)
        if g.dtype.is_floating_point or g.dtype.is_complex or g.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got {g.dtype}")
        out.append(g.to(device=device, dtype=torch.int64))
    qg, dg = out
    if qg.dim() == 1:
        qg = qg[:, None]
    if qg.dim() != 2 or qg.shape[0] != bq or not 1 <= qg.shape[1] <= 2:
        raise ValueError(
            f"q_groups must be [{bq}] or [{bq}, K] with K <= 2 (one row per query), got {tuple(q_groups.shape)}"
        )
    if tuple(dg.shape) != (bd,):
        raise ValueError(f"d_groups must have shape [{bd}] (one per document), got {tuple(d_groups.shape)}")
    if qg.shape[1] == 1:
        qg = torch.cat([qg, torch.full_like(qg, -1)], dim=1)
    return qg.contiguous(), dg.contiguous()
