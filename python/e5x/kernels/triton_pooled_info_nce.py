"""Triton kernels, launchers and autograd Functions for pooled InfoNCE.

Imported only when the Triton path is used (``e5x.kernels`` dispatches here). The math,
FLOP/byte floors and tuning notes are in ``kernels/`` of the repository; the spec is
``reference.py``. Notation: x = pooled raw row, r = 1/max(|x|, eps), e = x r,
A = Xq Xd^T (raw dot products), S = A * rq rd^T / tau, P = softmax_rows(S), Y = one-hot
of the positives, G = dL/dS = (P - Y) * g_i (g = upstream gradient per row).

Forward
  1. ``_pool_norm_fwd``: per row, copy hidden[b, last[b]] into a compact [B, H] buffer
     (exact, compute dtype) and its 1/norm (fp32); optionally e = x r (returned embeddings).
     Scores use the *raw* rows and scale by rq rd in fp32, so normalised rows are never
     rounded to bf16 before the dot product (the loss stays fp32-accurate).
  2. ``_lse_fwd``: flash-style, a (query tile x slice of document tiles) per program; the
     score tile is accumulated in fp32 with tl.dot over H and folded into an online
     (max, sum-exp) per query row (log2 domain). The Bq x Bd matrix never exists; partial
     results of the SPLIT document slices ([SPLIT, Bq] floats) are merged by ``_lse_merge``.
  3. ``_lse_merge`` merges the SPLIT partials per row (one launch); ``_rowdot``: the
     positive's raw dot product in fp32 and loss_i = lse_i - S_i,pos(i) in the same launch.
False negatives (group ids given, see ``reference.false_negative_mask``): ``_lse_fwd`` sets
  their scores to the padding value NEG before the online log-sum-exp (and stores them so),
  and ``_dscores`` does the same to recomputed tiles, so they get P = 0 and no gradient in
  every mode; the ids are two int64 per query and one per document, compared per tile.
Gradient, per chunk of C query rows (C from the E5X_INFONCE_CHUNK_MIB budget)
  4. ``_dscores``: dA = G * rq rd^T / tau in the compute dtype into a [C, Bd] buffer (any
     window of rows x columns), from
     recomputed score tiles (backward mode) or from fp32 score tiles stored by ``_lse_fwd``
     for this chunk (fused mode, see below).
  5. Rq_c = dA_c @ Xd and Rd += dA_c^T @ Xq_c: plain GEMMs with fp32 accumulation, left to
     cuBLAS (an H = 4096-wide output row block cannot live in one Triton program, and cuBLAS
     is the matmul ceiling we are measured against).
  6. ``_pool_norm_bwd``: dx = R - x r^2 (x . R) (the normalisation backward in terms of
     R = r de), scattered into a zero-initialised [B, L, H] gradient at the pooled
     positions only.
Modes (E5X_INFONCE_MODE)
  - fused (reduction mean/sum with grad enabled; chosen by the default "auto" while its
    accumulator fits): the upstream gradient is one scalar, so 4-6 run inside the forward
    with g = 1 from stored score tiles: 3 GEMMs in all. Backward multiplies by the scalar
    (skipped when it is 1).
  - lean (same cases as fused; "auto" picks it when fused's accumulator would take more
    than half of the available device memory): as fused, minus the fp32 [Bd, H] accumulator of
    Rd: the row chunks finish only the query gradients, then a pass over chunks of document
    columns recomputes those score tiles (every lse is known by then) and finishes each
    document's gradient at once: 4 GEMMs, memory = returned gradients + chunk budget.
  - backward (reduction "none", or E5X_INFONCE_MODE=backward): the forward keeps only lse;
    the backward recomputes the score tiles: 4 GEMMs.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import triton
import triton.language as tl

from . import _settings as S

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
NORM_EPS = 1e-12
# "minus infinity" that keeps (m_old - m_new) finite; a constexpr so that compiled kernels
# may read it (Triton refuses plain globals; the interpreter would not notice).
NEG: tl.constexpr = tl.constexpr(-1.0e30)

# ----------------------------------------------------------------------------- kernels


@triton.jit
def _pool_norm_fwd(
    X,
    IDX,
    RAW,
    E,
    RSTD,
    stride_xb,
    stride_xl,
    H,
    NORMALIZE: tl.constexpr,
    WRITE_RAW: tl.constexpr,
    WRITE_E: tl.constexpr,
    EPS: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Row b: RAW[b] = X[b, IDX[b]] (exact copy), RSTD[b] = 1/max(|x|, eps), E[b] = x * rstd."""
    b = tl.program_id(0).to(tl.int64)
    idx = tl.load(IDX + b).to(tl.int64)
    x_row = X + b * stride_xb + idx * stride_xl
    rstd = 1.0
    if NORMALIZE:
        acc = tl.zeros([BLOCK_H], dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            offs = h0 + tl.arange(0, BLOCK_H)
            x = tl.load(x_row + offs, mask=offs < H, other=0.0).to(tl.float32)
            acc += x * x
        rstd = 1.0 / tl.maximum(tl.sqrt(tl.sum(acc, axis=0)), EPS)
        tl.store(RSTD + b, rstd)
    if WRITE_RAW or WRITE_E:
        for h0 in range(0, H, BLOCK_H):
            offs = h0 + tl.arange(0, BLOCK_H)
            x = tl.load(x_row + offs, mask=offs < H, other=0.0)
            if WRITE_RAW:
                tl.store(RAW + b * H + offs, x, mask=offs < H)
            if WRITE_E:
                e = x.to(tl.float32) * rstd
                tl.store(E + b * H + offs, e.to(E.dtype.element_ty), mask=offs < H)


@triton.jit
def _pool_norm_bwd(
    X,
    IDX,
    RSTD,
    R,
    DX,
    row0,
    stride_xb,
    stride_xl,
    stride_gb,
    stride_gl,
    stride_r,
    H,
    NORMALIZE: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Scatter dx of row row0 + program_id into DX[b, IDX[b]] (DX is zero elsewhere).

    R is the gradient w.r.t. the raw pooled row through the *unnormalised* dot products
    (r = rstd, e = x r): R = r * de, and the normalisation backward
    dx = r (de - e (e . de)) becomes dx = R - x r^2 (x . R).
    """
    b_local = tl.program_id(0).to(tl.int64)
    b = b_local + row0
    idx = tl.load(IDX + b).to(tl.int64)
    x_row = X + b * stride_xb + idx * stride_xl
    g_row = DX + b * stride_gb + idx * stride_gl
    r_row = R + b_local * stride_r
    if NORMALIZE:
        r = tl.load(RSTD + b)
        acc = tl.zeros([BLOCK_H], dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            offs = h0 + tl.arange(0, BLOCK_H)
            x = tl.load(x_row + offs, mask=offs < H, other=0.0).to(tl.float32)
            g = tl.load(r_row + offs, mask=offs < H, other=0.0).to(tl.float32)
            acc += x * g
        c = tl.sum(acc, axis=0) * r * r
        for h0 in range(0, H, BLOCK_H):
            offs = h0 + tl.arange(0, BLOCK_H)
            x = tl.load(x_row + offs, mask=offs < H, other=0.0).to(tl.float32)
            g = tl.load(r_row + offs, mask=offs < H, other=0.0).to(tl.float32)
            tl.store(g_row + offs, (g - x * c).to(DX.dtype.element_ty), mask=offs < H)
    else:
        for h0 in range(0, H, BLOCK_H):
            offs = h0 + tl.arange(0, BLOCK_H)
            g = tl.load(r_row + offs, mask=offs < H, other=0.0)
            tl.store(g_row + offs, g.to(DX.dtype.element_ty), mask=offs < H)


@triton.jit
def _rowdot(Q, D, POS, RQ, RD, LSE2, OUT, H, inv_t, BLOCK_H: tl.constexpr):
    """OUT[i] = loss_i = lse_i - S_i,pos(i), with the positive's raw dot product Q[i] . D[POS[i]]
    in fp32 scaled by rq_i rd_pos / tau, and lse_i = LSE2[i] ln 2 (one launch for the epilogue)."""
    i = tl.program_id(0).to(tl.int64)
    p = tl.load(POS + i).to(tl.int64)
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        offs = h0 + tl.arange(0, BLOCK_H)
        q = tl.load(Q + i * H + offs, mask=offs < H, other=0.0).to(tl.float32)
        d = tl.load(D + p * H + offs, mask=offs < H, other=0.0).to(tl.float32)
        acc += q * d
    pos_logit = tl.sum(acc, axis=0) * tl.load(RQ + i) * tl.load(RD + p) * inv_t
    tl.store(OUT + i, tl.load(LSE2 + i) * 0.6931471805599453 - pos_logit)


@triton.jit
def _lse_merge(M, L, OUT, Bq, SPLIT, BLOCK: tl.constexpr):
    """OUT[i] = log2 of sum over the SPLIT partials (max M, sum-exp2 L) of row i: the
    document slices of _lse_fwd merged in one launch (OUT may be a slice of a longer lse)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < Bq
    mx = tl.full([BLOCK], NEG, dtype=tl.float32)
    for k in range(0, SPLIT):
        mx = tl.maximum(mx, tl.load(M + k * Bq + offs, mask=ok, other=NEG))
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for k in range(0, SPLIT):
        m = tl.load(M + k * Bq + offs, mask=ok, other=NEG)
        acc += tl.load(L + k * Bq + offs, mask=ok, other=0.0) * tl.exp2(m - mx)
    tl.store(OUT + offs, mx + tl.log2(tl.where(ok, acc, 1.0)), mask=ok)


@triton.jit
def _score_tile(
    Q,
    D,
    offs_m,
    offs_n,
    Bq,
    Bd,
    H,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """fp32 tile Q[offs_m] . D[offs_n]^T over the full hidden size (Q, D contiguous [*, H])."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    m_ok = offs_m < Bq
    n_ok = offs_n < Bd
    for k0 in range(0, H, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < H
        q = tl.load(Q + offs_m[:, None] * H + offs_k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        d = tl.load(D + offs_n[None, :] * H + offs_k[:, None], mask=n_ok[None, :] & k_ok[:, None], other=0.0)
        if UPCAST:
            # Triton's interpreter mis-multiplies 16-bit tl.dot operands (triton 3.9); the
            # products of 16-bit values are exact in fp32, so upcasting changes nothing else.
            q = q.to(tl.float32)
            d = d.to(tl.float32)
        acc = tl.dot(q, d, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _false_negatives(POS, QG, DG, offs_m, offs_n, m_ok, n_ok):
    """[M, N] True where document n is a false negative of query m: its group id (>= 0)
    is one of the query's two, and it is not the query's positive (see reference.py)."""
    pos = tl.load(POS + offs_m, mask=m_ok, other=-1)
    g0 = tl.load(QG + 2 * offs_m, mask=m_ok, other=-1)
    g1 = tl.load(QG + 2 * offs_m + 1, mask=m_ok, other=-1)
    dg = tl.load(DG + offs_n, mask=n_ok, other=-1)
    same = (dg[None, :] == g0[:, None]) | (dg[None, :] == g1[:, None])
    return same & (dg >= 0)[None, :] & (offs_n[None, :] != pos[:, None])


@triton.jit
def _lse_fwd(
    Q,
    D,
    RQ,
    RD,
    M_OUT,
    L_OUT,
    S_OUT,
    POS,
    QG,
    DG,
    Bq,
    Bd,
    H,
    SPLIT,
    stride_s,
    scale2,
    KEY_M,
    KEY_N,  # autotune key only: the call's rows and columns bucketed (see _bucket)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    STORE_S: tl.constexpr,
    MASK_FN: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    n_tiles = tl.cdiv(Bd, BLOCK_N)
    per = tl.cdiv(n_tiles, SPLIT)
    t0 = pid_s * per
    t1 = tl.minimum(t0 + per, n_tiles)
    m_i = tl.full([BLOCK_M], NEG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    # scores of *raw* rows scaled by 1/|q| 1/|d| in fp32: no rounding of normalised rows
    rq = tl.load(RQ + offs_m, mask=offs_m < Bq, other=0.0) * scale2
    for t in range(t0, t1):
        offs_n = (t * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        s = _score_tile(Q, D, offs_m, offs_n, Bq, Bd, H, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, UPCAST)
        rd = tl.load(RD + offs_n, mask=offs_n < Bd, other=0.0)
        s = tl.where((offs_n < Bd)[None, :], s * rq[:, None] * rd[None, :], NEG)  # log2 units
        if MASK_FN:  # false negatives leave the softmax like padding columns; stored as NEG, p = 0
            s = tl.where(_false_negatives(POS, QG, DG, offs_m, offs_n, offs_m < Bq, offs_n < Bd), NEG, s)
        if STORE_S:  # fused mode: keep the fp32 tile for the gradient (one chunk of rows)
            tl.store(
                S_OUT + offs_m[:, None] * stride_s + offs_n[None, :],
                s,
                mask=(offs_m < Bq)[:, None] & (offs_n < Bd)[None, :],
            )
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), axis=1)
        m_i = m_new
    out = pid_s * Bq + offs_m
    tl.store(M_OUT + out, m_i, mask=offs_m < Bq)
    tl.store(L_OUT + out, l_i, mask=offs_m < Bq)


@triton.jit
def _dscores(
    Q,
    D,
    RQ,
    RD,
    LSE2,
    POS,
    COEF,
    DS,
    S_IN,
    QG,
    DG,
    row0,
    n_rows,
    col0,
    n_cols,
    Bq,
    Bd,
    H,
    stride_ds,
    stride_s,
    scale2,
    KEY_M,
    KEY_N,  # autotune key only: the window's rows and columns bucketed (see _bucket)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    FROM_S: tl.constexpr,
    MASK_FN: tl.constexpr,
):
    """dA for the window rows [row0, row0 + n_rows) x columns [col0, col0 + n_cols), written
    at window-local positions of DS; S_IN (FROM_S) holds the window's rows, all columns."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    local = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_m = row0 + local
    local_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_n = col0 + local_n
    r_ok = local < n_rows
    n_ok = local_n < n_cols
    lse2 = tl.load(LSE2 + offs_m, mask=r_ok, other=0.0)
    pos = tl.load(POS + offs_m, mask=r_ok, other=-1)
    coef = tl.load(COEF + offs_m, mask=r_ok, other=0.0)
    rq = tl.load(RQ + offs_m, mask=r_ok, other=0.0)
    rd = tl.load(RD + offs_n, mask=n_ok, other=0.0)
    rr = rq[:, None] * rd[None, :]
    if FROM_S:  # the forward stored this chunk's scores (log2 units, scaled): no GEMM
        s2 = tl.load(S_IN + local[:, None] * stride_s + offs_n[None, :], mask=r_ok[:, None] & n_ok[None, :], other=0.0)
    else:  # recompute the score tile
        s = _score_tile(Q, D, offs_m, offs_n, Bq, Bd, H, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION, UPCAST)
        s2 = s * rr * scale2
        if MASK_FN:  # stored scores carry the mask already
            s2 = tl.where(_false_negatives(POS, QG, DG, offs_m, offs_n, r_ok, n_ok), NEG, s2)
    p = tl.exp2(s2 - lse2[:, None])
    onehot = tl.where(offs_n[None, :] == pos[:, None], 1.0, 0.0)
    # gradient w.r.t. the raw dot product q . d: (P - Y) * g_i / tau * rq_i * rd_j
    ds = (p - onehot) * (coef[:, None] * rr)
    tl.store(
        DS + local[:, None] * stride_ds + local_n[None, :],
        ds.to(DS.dtype.element_ty),
        mask=r_ok[:, None] & n_ok[None, :],
    )


# ----------------------------------------------------------------------------- configs

# Tile configs per compute dtype, for H100/H200-class GPUs. Autotuned over this short list
# (key: H and the matrix sizes' tile counts) unless E5X_AUTOTUNE=0, which takes the first.
# See kernels/TUNING.md.
_GPU_CONFIGS: dict[str, list[dict[str, int]]] = {
    "16bit": [
        dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3),
        dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=4),
        dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, num_warps=8, num_stages=3),
        dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=4),
    ],
    "fp32": [
        dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3),
        dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=8, num_stages=3),
        dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3),
    ],
}
# The interpreter runs tiles as numpy arrays: small tiles keep tests fast and still cover
# masking (tl.dot needs every dimension >= 16).
_INTERPRET_CONFIG = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=1, num_stages=1)


def _dtype_key(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "16bit"


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs: "tf32x3" (three tensor-core TF32 products, ~fp32 accuracy at a fraction of
    # the FMA path's cost); plain TF32's 10-bit mantissa would move a logit at tau = 0.02 by
    # ~0.05. 16-bit inputs: products are exact in fp32, the setting does not apply. Under the
    # interpreter 16-bit tiles are upcast to fp32 and must then be multiplied exactly.
    if INTERPRET:
        return "ieee"
    return "tf32x3" if dtype == torch.float32 else "tf32"


def _upcast(dtype: torch.dtype) -> bool:
    return INTERPRET and dtype != torch.float32


def _autotune_enabled() -> bool:
    return not INTERPRET and S.current().autotune


def _bucket(n: int) -> int:
    """Autotune key of a row or column count: the next power of two (>= 16). A ragged tail
    chunk, or another rank's document count, lands in the same bucket as the full ones and
    reuses their tune instead of stalling 1-3 s (at different times on different ranks)."""
    return max(16, triton.next_power_of_2(max(1, int(n))))


_TUNED: dict[tuple[str, str], Any] = {}


def _launcher(kernel: Any, name: str, dtype: torch.dtype) -> tuple[Any, dict[str, int] | None]:
    """(callable kernel, fixed meta-params or None when the autotuner picks them)."""
    if INTERPRET:
        return kernel, dict(_INTERPRET_CONFIG)
    key = _dtype_key(dtype)
    if not _autotune_enabled():
        return kernel, dict(_GPU_CONFIGS[key][0])
    if (name, key) not in _TUNED:
        configs = [
            triton.Config(
                {k: v for k, v in c.items() if k.startswith("BLOCK")},
                num_warps=c["num_warps"],
                num_stages=c["num_stages"],
            )
            for c in _GPU_CONFIGS[key]
        ]
        mode = {"lse": "STORE_S", "dscores": "FROM_S"}[name]  # fused and backward mode tune apart
        # keyed on bucketed sizes (_bucket), not the exact Bq / Bd of every call
        _TUNED[(name, key)] = triton.autotune(configs, key=["H", "KEY_M", "KEY_N", mode])(kernel)
    return _TUNED[(name, key)], None


def _block_h(h: int) -> int:
    return min(triton.next_power_of_2(h), 16 if INTERPRET else 1024)


def _row_warps(h: int) -> dict[str, int]:
    return {} if INTERPRET else {"num_warps": 4 if h <= 1024 else 8}


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


# ----------------------------------------------------------------------------- launchers


def _pool(
    hidden: torch.Tensor,
    idx: torch.Tensor,
    normalize: bool,
    *,
    raw: bool,
    emb: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """(compact raw pooled rows [B, H] or None, normalised rows or None, 1/norm fp32)."""
    b, seq, h = hidden.shape
    out_raw = None
    if raw and seq == 1 and hidden.is_contiguous():
        # embeddings given directly (info_nce, GradCache): the rows are the input, no copy
        out_raw, raw = hidden.view(b, h), False
    elif raw:
        out_raw = torch.empty((b, h), dtype=hidden.dtype, device=hidden.device)
    out_e = torch.empty((b, h), dtype=hidden.dtype, device=hidden.device) if emb else None
    rstd = torch.ones((b,), dtype=torch.float32, device=hidden.device)
    dummy = rstd  # never written when the matching WRITE_* flag is off
    _pool_norm_fwd[(b,)](
        hidden,
        idx,
        out_raw if raw else dummy,
        out_e if emb else dummy,
        rstd,
        hidden.stride(0),
        hidden.stride(1),
        h,
        NORMALIZE=normalize,
        WRITE_RAW=raw,
        WRITE_E=emb,
        EPS=NORM_EPS,
        BLOCK_H=_block_h(h),
        **_row_warps(h),
    )
    return out_raw, out_e, rstd


def _pool_backward(
    x: torch.Tensor,
    stride_xb: int,
    stride_xl: int,
    idx: torch.Tensor,
    rstd: torch.Tensor,
    r: torch.Tensor,
    grad: torch.Tensor,
    normalize: bool,
    row0: int = 0,
) -> None:
    """Scatter the gradient of rows [row0, row0 + len(r)) into grad (zero elsewhere).

    x: the pooled rows, either the hidden states (strides of [B, L, H]) or a compact
    [B, H] copy (stride_xl = 0); r: gradient w.r.t. the raw rows (see _pool_norm_bwd).
    """
    r = r if r.stride(-1) == 1 else r.contiguous()
    n, h = r.shape
    if n == 0:
        return
    _pool_norm_bwd[(n,)](
        x,
        idx,
        rstd,
        r,
        grad,
        row0,
        stride_xb,
        stride_xl,
        grad.stride(0),
        grad.stride(1),
        r.stride(0),
        h,
        NORMALIZE=normalize,
        BLOCK_H=_block_h(h),
        **_row_warps(h),
    )


Groups = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _rows_mask(pos: torch.Tensor, groups: tuple[torch.Tensor, torch.Tensor] | None, r0: int, n: int) -> Groups | None:
    """_lse2's mask argument for query rows [r0, r0 + n): their positives and ids, all documents' ids."""
    if groups is None:
        return None
    qg, dg = groups
    return pos[r0 : r0 + n], qg[r0 : r0 + n], dg


def _lse2(
    q: torch.Tensor,
    d: torch.Tensor,
    rq: torch.Tensor,
    rd: torch.Tensor,
    scale2: float,
    s_out: torch.Tensor | None = None,
    mask: Groups | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Row log2-sum-exp2 of (q d^T) * rq rd^T * scale2, without materialising q d^T
    (unless s_out [len(q), Bd] fp32 is given: then those scaled scores are stored there),
    written into ``out`` (a contiguous fp32 [len(q)] view) when given.
    ``mask`` = (positives, query ids, document ids) of these rows leaves false negatives out."""
    bq, h = q.shape
    bd = d.shape[0]
    # Split the document axis so that even a few query tiles fill the GPU, and into enough
    # programs (~16 per SM) that the last partial wave costs little: one CTA of the GEMM
    # tile configs fits per SM (registers), so 1.1 waves would run at ~55 % efficiency.
    q_tiles = triton.cdiv(bq, 64 if not INTERPRET else 16)
    d_tiles = triton.cdiv(bd, 128 if not INTERPRET else 16)
    split = max(1, min(d_tiles, triton.cdiv(16 * _num_sms(q.device), q_tiles)))
    m = torch.empty((split, bq), dtype=torch.float32, device=q.device)
    s = torch.empty_like(m)
    kernel, meta = _launcher(_lse_fwd, "lse", q.dtype)
    store = s_out is not None
    pos, qg, dg = mask if mask is not None else (rq, rq, rq)  # never read without MASK_FN
    args = (
        q,
        d,
        rq,
        rd,
        m,
        s,
        s_out if store else m,
        pos,
        qg,
        dg,
        bq,
        bd,
        h,
        split,
        s_out.stride(0) if s_out is not None else 0,
        scale2,
        _bucket(bq),
        _bucket(bd),
    )
    flags = dict(PRECISION=_precision(q.dtype), UPCAST=_upcast(q.dtype), STORE_S=store, MASK_FN=mask is not None)
    if meta is None:
        kernel[lambda META: (triton.cdiv(bq, META["BLOCK_M"]), split)](*args, **flags)
    else:
        kernel[(triton.cdiv(bq, meta["BLOCK_M"]), split)](*args, **flags, **meta)
    out = torch.empty((bq,), dtype=torch.float32, device=q.device) if out is None else out
    block = 16 if INTERPRET else 256
    _lse_merge[(triton.cdiv(bq, block),)](m, s, out, bq, split, BLOCK=block, **({} if INTERPRET else {"num_warps": 2}))
    return out


def _chunk_len(total: int, row_bytes: int) -> int:
    """Rows (or columns) per gradient chunk when each costs `row_bytes` of chunk buffers:
    together they stay within the E5X_INFONCE_CHUNK_MIB budget; whole tiles per chunk."""
    budget = int(S.current().chunk_mib * 2**20)
    n = max(1, budget // max(1, row_bytes))
    if n >= total:
        return total
    unit = 16 if INTERPRET else 128
    return max(unit, n // unit * unit)


_MM_OUT_DTYPE: bool | None = None  # does torch.mm take out_dtype here (CUDA, torch >= 2.8)?


def _is_cuda(t: torch.Tensor) -> bool:
    return t.is_cuda


def _mm_f32(a: torch.Tensor, b: torch.Tensor, acc: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b with fp32 accumulation and fp32 result (added into acc in place if given).

    On CUDA with 16-bit operands: ``torch.mm(..., out_dtype=float32)`` (cuBLAS writes fp32)
    where this torch has it. Where it does not (TypeError: no such argument; RuntimeError:
    no kernel for these dtypes), the bf16-output GEMM + upcast is used from then on: logged
    once and recorded (``runtime_info()["gemm_fallback"]``). Out of memory is not a reason
    to switch paths: it is re-raised.
    """
    global _MM_OUT_DTYPE
    if a.dtype != torch.float32 and _is_cuda(a) and _MM_OUT_DTYPE is not False:
        try:
            if acc is None:
                out = torch.mm(a, b, out_dtype=torch.float32)
            else:
                # in place (beta = 1): no extra [M, N] fp32 temporary
                out = torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
        except torch.OutOfMemoryError:
            raise
        except (TypeError, RuntimeError) as exc:
            if "out of memory" in str(exc).lower():  # an OOM raised as a plain RuntimeError
                raise
            _MM_OUT_DTYPE = False
            S.RUNTIME["gemm_path"] = "mm (operand dtype out) + fp32 upcast"
            S.record_fallback(
                "gemm",
                f"torch.mm(out_dtype=float32) unavailable for {a.dtype}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
            )
        else:
            if _MM_OUT_DTYPE is None:
                _MM_OUT_DTYPE = True
                S.RUNTIME["gemm_path"] = "mm(out_dtype=float32)"
            return out
    if _is_cuda(a):
        # cuBLAS accumulates in fp32 and rounds the result once to a's dtype.
        prod = torch.mm(a, b).float()
    else:
        prod = a.float() @ b.float()
    if acc is None:
        return prod
    acc += prod
    return acc


def _dscores_window(
    q_raw: torch.Tensor,
    d_raw: torch.Tensor,
    q_rstd: torch.Tensor,
    d_rstd: torch.Tensor,
    lse2: torch.Tensor,
    pos: torch.Tensor,
    coef: torch.Tensor,
    out: torch.Tensor,
    rows: tuple[int, int],
    cols: tuple[int, int],
    scale2: float,
    s_in: torch.Tensor | None = None,
    groups: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """out[:n, :m] = dA of query rows [r0, r0 + n) x documents [c0, c0 + m), from the stored
    fp32 scores s_in (that window's rows, all columns) or from recomputed score tiles;
    ``groups`` (all rows' query ids, document ids) masks false negatives of recomputed tiles."""
    (r0, n), (c0, m) = rows, cols
    bq, h = q_raw.shape
    bd = d_raw.shape[0]
    kernel, meta = _launcher(_dscores, "dscores", q_raw.dtype)
    from_s = s_in is not None
    mask = groups is not None and not from_s
    qg, dg = groups if groups is not None else (pos, pos)  # never read without MASK_FN
    args = (
        q_raw,
        d_raw,
        q_rstd,
        d_rstd,
        lse2,
        pos,
        coef,
        out,
        s_in if from_s else out,
        qg,
        dg,
        r0,
        n,
        c0,
        m,
        bq,
        bd,
        h,
        out.stride(0),
        s_in.stride(0) if s_in is not None else 0,
        scale2,
        _bucket(n),
        _bucket(m),
    )
    flags = dict(PRECISION=_precision(q_raw.dtype), UPCAST=_upcast(q_raw.dtype), FROM_S=from_s, MASK_FN=mask)
    if meta is None:
        kernel[lambda META: (triton.cdiv(n, META["BLOCK_M"]), triton.cdiv(m, META["BLOCK_N"]))](*args, **flags)
    else:
        kernel[(triton.cdiv(n, meta["BLOCK_M"]), triton.cdiv(m, meta["BLOCK_N"]))](*args, **flags, **meta)


def _infonce_backward(
    saved: tuple[torch.Tensor, ...],
    coef: torch.Tensor,
    temperature: float,
    normalize: bool,
    g_q_emb: torch.Tensor | None,
    g_d_emb: torch.Tensor | None,
    need_q: bool,
    need_d: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    q_hidden, d_hidden, q_idx, d_idx, pos, q_raw, d_raw, q_rstd, d_rstd, lse2, qg, dg = saved
    groups = (qg, dg) if qg is not None else None
    bq, h = q_raw.shape
    bd = d_raw.shape[0]
    scale2 = LOG2E / temperature
    grad_q = torch.zeros_like(q_hidden) if need_q else None
    grad_d = torch.zeros_like(d_hidden) if need_d else None
    # r_d: gradient w.r.t. the raw pooled document rows, accumulated over query chunks
    r_d = torch.zeros((bd, h), dtype=torch.float32, device=d_raw.device) if need_d else None
    if need_d and g_d_emb is not None:  # de -> R = rstd * de (see _pool_norm_bwd)
        assert r_d is not None
        r_d += g_d_emb.float() * d_rstd[:, None]
    # per row: dA [Bd] in the compute dtype + its fp32 Rq row [H]
    rows = _chunk_len(bq, bd * q_raw.element_size() + 4 * h)
    ds_buf = torch.empty((rows, bd), dtype=q_raw.dtype, device=q_raw.device)
    for r0 in range(0, bq, rows):
        n = min(rows, bq - r0)
        ds = ds_buf[:n]
        _dscores_window(q_raw, d_raw, q_rstd, d_rstd, lse2, pos, coef, ds, (r0, n), (0, bd), scale2, groups=groups)
        if need_q:
            r_q = _mm_f32(ds, d_raw)  # [n, H], complete for these rows: finish them now
            if g_q_emb is not None:
                r_q += g_q_emb[r0 : r0 + n].float() * q_rstd[r0 : r0 + n, None]
            assert grad_q is not None
            _pool_backward(q_raw, h, 0, q_idx, q_rstd, r_q, grad_q, normalize, row0=r0)
        if need_d:
            _mm_f32(ds.T, q_raw[r0 : r0 + n], acc=r_d)
    if need_d:
        assert r_d is not None and grad_d is not None
        _pool_backward(d_raw, h, 0, d_idx, d_rstd, r_d, grad_d, normalize)
    return grad_q, grad_d


def _fused_loss_and_grads(
    q_hidden: torch.Tensor,
    d_hidden: torch.Tensor,
    q_idx: torch.Tensor,
    d_idx: torch.Tensor,
    pos: torch.Tensor,
    q_raw: torch.Tensor,
    d_raw: torch.Tensor,
    q_rstd: torch.Tensor,
    d_rstd: torch.Tensor,
    temperature: float,
    reduction: str,
    normalize: bool,
    need_q: bool,
    need_d: bool,
    lean: bool = False,
    groups: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Forward that also computes the gradients for an upstream gradient of 1.

    For reduction "mean"/"sum" the upstream gradient is one scalar, so the gradient can be
    formed while the scores are at hand: per chunk of query rows the fp32 score tiles are
    stored once ([C, Bd], bounded by the chunk budget), the chunk's log-sum-exp completed,
    and dS built from the stored scores. That is 3 GEMMs in all (S, dQ, dD) instead of 4
    (S, recomputed S, dQ, dD); backward then only scales by the upstream scalar.

    The document gradient sums over all query chunks, into an fp32 [Bd, H] accumulator
    (4 Bd H bytes: 1 GiB at Bd = 65536, H = 4096). ``lean`` has none: the row chunks finish
    only the query gradients; a second pass over chunks of document columns, with every
    row's log-sum-exp known by then, recomputes those score tiles and finishes the document
    gradients (4 GEMMs, memory = the returned gradients + the chunk budget).
    """
    bq, h = q_raw.shape
    bd = d_raw.shape[0]
    scale2 = LOG2E / temperature
    coef_val = 1.0 / temperature if reduction == "sum" else 1.0 / (temperature * bq)
    coef = torch.full((bq,), coef_val, dtype=torch.float32, device=q_raw.device)
    grad_q = torch.zeros_like(q_hidden) if need_q else None
    grad_d = torch.zeros_like(d_hidden) if need_d else None
    acc_d = need_d and not lean
    r_d = torch.zeros((bd, h), dtype=torch.float32, device=d_raw.device) if acc_d else None
    if need_q or acc_d:
        lse2 = _row_pass(q_raw, d_raw, q_idx, q_rstd, d_rstd, pos, coef, scale2, normalize, grad_q, r_d, groups)
    else:  # lean, documents only: the log-sum-exp is all the first pass has to give
        lse2 = _lse2(q_raw, d_raw, q_rstd, d_rstd, scale2, mask=_rows_mask(pos, groups, 0, bq))
    if acc_d:
        assert r_d is not None and grad_d is not None
        _pool_backward(d_raw, h, 0, d_idx, d_rstd, r_d, grad_d, normalize)
    elif need_d:
        assert grad_d is not None
        _column_pass(q_raw, d_raw, d_idx, q_rstd, d_rstd, lse2, pos, coef, scale2, normalize, grad_d, groups)
    return lse2, grad_q, grad_d


def _row_pass(
    q_raw: torch.Tensor,
    d_raw: torch.Tensor,
    q_idx: torch.Tensor,
    q_rstd: torch.Tensor,
    d_rstd: torch.Tensor,
    pos: torch.Tensor,
    coef: torch.Tensor,
    scale2: float,
    normalize: bool,
    grad_q: torch.Tensor | None,
    r_d: torch.Tensor | None,
    groups: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per chunk of query rows: lse from stored fp32 score tiles, dA, then the rows' query
    gradients into grad_q and dA^T Xq added into r_d (either may be None). Returns lse2.
    Its buffers are freed on return (the column pass reuses the memory)."""
    bq, h = q_raw.shape
    bd = d_raw.shape[0]
    lse2 = torch.empty((bq,), dtype=torch.float32, device=q_raw.device)
    # per row: fp32 scores + dA [Bd] and the fp32 Rq row [H]
    rows = _chunk_len(bq, bd * (4 + q_raw.element_size()) + 4 * h)
    s_buf = torch.empty((rows, bd), dtype=torch.float32, device=q_raw.device)
    ds_buf = torch.empty((rows, bd), dtype=q_raw.dtype, device=q_raw.device)
    for r0 in range(0, bq, rows):
        n = min(rows, bq - r0)
        s_c, ds = s_buf[:n], ds_buf[:n]
        _lse2(
            q_raw[r0 : r0 + n],
            d_raw,
            q_rstd[r0 : r0 + n],
            d_rstd,
            scale2,
            s_out=s_c,
            out=lse2[r0 : r0 + n],
            mask=_rows_mask(pos, groups, r0, n),
        )
        _dscores_window(q_raw, d_raw, q_rstd, d_rstd, lse2, pos, coef, ds, (r0, n), (0, bd), scale2, s_in=s_c)
        if grad_q is not None:
            r_q = _mm_f32(ds, d_raw)
            _pool_backward(q_raw, h, 0, q_idx, q_rstd, r_q, grad_q, normalize, row0=r0)
            del r_q  # before the next chunk allocates its own
        if r_d is not None:
            _mm_f32(ds.T, q_raw[r0 : r0 + n], acc=r_d)
    return lse2


def _column_pass(
    q_raw: torch.Tensor,
    d_raw: torch.Tensor,
    d_idx: torch.Tensor,
    q_rstd: torch.Tensor,
    d_rstd: torch.Tensor,
    lse2: torch.Tensor,
    pos: torch.Tensor,
    coef: torch.Tensor,
    scale2: float,
    normalize: bool,
    grad_d: torch.Tensor,
    groups: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Lean mode's document gradients, per chunk of document columns: every row's lse is
    known, so dA of the window comes from recomputed score tiles, and dA^T Xq is complete for
    those documents (no accumulator over query chunks)."""
    bq, h = q_raw.shape
    bd = d_raw.shape[0]
    # per document: its dA column [Bq] and fp32 Rd row [H]
    cols = _chunk_len(bd, bq * q_raw.element_size() + 4 * h)
    dc_buf = torch.empty((bq, cols), dtype=q_raw.dtype, device=q_raw.device)
    for c0 in range(0, bd, cols):
        m = min(cols, bd - c0)
        ds = dc_buf[:, :m]
        _dscores_window(q_raw, d_raw, q_rstd, d_rstd, lse2, pos, coef, ds, (0, bq), (c0, m), scale2, groups=groups)
        r_dc = _mm_f32(ds.T, q_raw)  # [m, H]
        _pool_backward(d_raw, h, 0, d_idx, d_rstd, r_dc, grad_d, normalize, row0=c0)
        del r_dc


def _infonce_mode(reduction: str, q: torch.Tensor, d: torch.Tensor) -> str:
    """The mode: "fused" / "lean" (gradients formed in the forward; mean/sum under autograd) or
    "backward" (forward keeps the log-sum-exp only), from the ``mode`` setting (argument,
    E5X_INFONCE_MODE, or configure). "auto" (the default) is fused unless its fp32 [Bd, H]
    document accumulator would take more than half of the device memory still available,
    then lean (slower by one GEMM, but it fits). The free-memory query (a driver call) is
    made only when the accumulator exceeds 1/16 of the card's memory."""
    mode = S.current().mode
    if reduction == "none" or not torch.is_grad_enabled() or not (q.requires_grad or d.requires_grad):
        return "backward"
    if mode == "auto":
        accumulator = 4 * d.shape[0] * d.shape[-1]
        if not d.requires_grad or accumulator <= _total_bytes(d.device) / 16:
            return "fused"
        return "lean" if accumulator > _available_bytes(d.device) / 2 else "fused"
    return mode


_TOTAL: dict[str, float] = {}


def _total_bytes(device: torch.device) -> float:
    """The card's memory (cached: no driver call per op call). 0 off CUDA: no shortcut there
    (_available_bytes costs nothing off CUDA)."""
    if device.type != "cuda":
        return 0.0
    key = str(device)
    if key not in _TOTAL:
        _TOTAL[key] = float(torch.cuda.get_device_properties(device).total_memory)
    return _TOTAL[key]


def _available_bytes(device: torch.device) -> float:
    """Device memory a new allocation can still get: free in the driver plus what torch's
    caching allocator holds unused. Unbounded off CUDA (the interpreter's CPU runs)."""
    if device.type != "cuda":
        return float("inf")
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


# ----------------------------------------------------------------------------- autograd


def _no_autocast(fn: Any) -> Any:
    """Run fn with autocast off: its torch.mm calls must see the kernels' dtypes (under a
    caller's bf16 autocast they would silently round fp32 operands to bf16)."""
    import functools

    @functools.wraps(fn)
    def wrapper(ctx: Any, *args: Any) -> Any:
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return fn(ctx, *args)

    return wrapper


class _PooledInfoNCE(torch.autograd.Function):
    @staticmethod
    @_no_autocast
    def forward(  # type: ignore[override]
        ctx: Any,
        q_hidden: torch.Tensor,
        d_hidden: torch.Tensor,
        q_idx: torch.Tensor,
        d_idx: torch.Tensor,
        pos: torch.Tensor,
        temperature: float,
        reduction: str,
        normalize: bool,
        want_emb: bool,
        mode: str,
        qg: torch.Tensor | None,
        dg: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        q_raw, q_emb, q_rstd = _pool(q_hidden, q_idx, normalize, raw=True, emb=want_emb)
        d_raw, d_emb, d_rstd = _pool(d_hidden, d_idx, normalize, raw=True, emb=want_emb)
        assert q_raw is not None and d_raw is not None  # raw=True
        bq, h = q_raw.shape
        groups = (qg, dg) if qg is not None and dg is not None else None  # both or neither
        fused = ctx.fused = mode != "backward"
        ctx.settings = S.current()  # the backward runs outside this call's argument scope
        if fused:
            lse2, ctx.grad_q, ctx.grad_d = _fused_loss_and_grads(
                q_hidden,
                d_hidden,
                q_idx,
                d_idx,
                pos,
                q_raw,
                d_raw,
                q_rstd,
                d_rstd,
                temperature,
                reduction,
                normalize,
                ctx.needs_input_grad[0],
                ctx.needs_input_grad[1],
                lean=mode == "lean",
                groups=groups,
            )
        else:
            lse2 = _lse2(q_raw, d_raw, q_rstd, d_rstd, LOG2E / temperature, mask=_rows_mask(pos, groups, 0, bq))
        rows = torch.empty((bq,), dtype=torch.float32, device=q_raw.device)
        _rowdot[(bq,)](
            q_raw, d_raw, pos, q_rstd, d_rstd, lse2, rows, h, 1.0 / temperature, BLOCK_H=_block_h(h), **_row_warps(h)
        )
        loss = rows if reduction == "none" else (rows.sum() if reduction == "sum" else rows.mean())
        if fused:  # the gradients exist already; keep what the embeddings' gradients need
            ctx.save_for_backward(q_hidden, d_hidden, q_idx, d_idx, q_rstd, d_rstd)
        else:
            ctx.save_for_backward(q_hidden, d_hidden, q_idx, d_idx, pos, q_raw, d_raw, q_rstd, d_rstd, lse2, qg, dg)
        ctx.temperature, ctx.reduction, ctx.normalize = temperature, reduction, normalize
        ctx.set_materialize_grads(False)
        if want_emb:
            return loss, q_emb, d_emb
        return loss, None, None

    @staticmethod
    @_no_autocast
    def backward(ctx: Any, g_loss: torch.Tensor | None, g_q: torch.Tensor | None, g_d: torch.Tensor | None):  # type: ignore[override]
        if ctx.fused:
            return _fused_backward(ctx, g_loss, g_q, g_d)
        with S.override(chunk_mib=ctx.settings.chunk_mib, autotune=ctx.settings.autotune):
            return _PooledInfoNCE._recompute_backward(ctx, g_loss, g_q, g_d)

    @staticmethod
    def _recompute_backward(ctx: Any, g_loss: torch.Tensor | None, g_q: torch.Tensor | None, g_d: torch.Tensor | None):
        saved = ctx.saved_tensors
        q_raw = saved[5]
        bq = q_raw.shape[0]
        t = ctx.temperature
        if g_loss is None:
            coef = torch.zeros((bq,), dtype=torch.float32, device=q_raw.device)
        elif ctx.reduction == "none":
            coef = g_loss.float() / t
        else:
            scale = 1.0 / t if ctx.reduction == "sum" else 1.0 / (t * bq)
            coef = (g_loss.float() * scale).expand(bq)
        grad_q, grad_d = _infonce_backward(
            saved,
            coef.contiguous(),
            t,
            ctx.normalize,
            g_q,
            g_d,
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
        )
        return grad_q, grad_d, None, None, None, None, None, None, None, None, None, None


def _fused_backward(ctx: Any, g_loss: torch.Tensor | None, g_q: torch.Tensor | None, g_d: torch.Tensor | None):
    """The gradients were formed in the forward for an upstream gradient of 1. They are
    handed to autograd without a copy: ctx lets go of them first, so the engine steals them
    into ``.grad`` (a tensor still referenced elsewhere would be cloned: +1 gradient of
    memory and a copy). The upstream scalar is applied on the pooled rows only, without
    reading it on the host (no sync); for a plain ``loss.backward()`` that multiplies by 1."""
    q_hidden, d_hidden, q_idx, d_idx, q_rstd, d_rstd = ctx.saved_tensors
    pres = [ctx.grad_q, ctx.grad_d]
    ctx.grad_q = ctx.grad_d = None
    grads: list[torch.Tensor | None] = []
    for k, (hidden, idx, rstd, g_emb) in enumerate(((q_hidden, q_idx, q_rstd, g_q), (d_hidden, d_idx, d_rstd, g_d))):
        pre, pres[k] = pres[k], None
        if pre is None:
            grads.append(None)
            continue
        if g_loss is None:
            pre.zero_()
        else:
            _scale_pooled_rows(pre, idx, g_loss)
        if g_emb is not None:  # gradient through the returned embeddings, added in place
            r = g_emb.float() * rstd[:, None] if ctx.normalize else g_emb
            extra = torch.zeros_like(hidden)
            _pool_backward(hidden, hidden.stride(0), hidden.stride(1), idx, rstd, r, extra, ctx.normalize)
            pre.add_(extra)
            del extra
        grads.append(pre)
        del pre
    return grads[0], grads[1], None, None, None, None, None, None, None, None, None, None


def _scale_pooled_rows(grad: torch.Tensor, idx: torch.Tensor, g: torch.Tensor) -> None:
    """grad *= g (a 0-dim tensor) where grad can be non-zero: the pooled rows of [B, L, H]
    (all of it when L = 1). In place, on the device; rounding as pre.mul(g) would."""
    if grad.shape[1] == 1:
        grad.mul_(g)
        return
    rows = torch.arange(grad.shape[0], device=grad.device)
    grad[rows, idx] = (grad[rows, idx] * g).to(grad.dtype)


class _Pool(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, idx: torch.Tensor, normalize: bool) -> torch.Tensor:  # type: ignore[override]
        _, emb, rstd = _pool(hidden, idx, normalize, raw=False, emb=True)
        assert emb is not None  # emb=True
        ctx.save_for_backward(hidden, idx, rstd)
        ctx.normalize = normalize
        return emb

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):  # type: ignore[override]
        hidden, idx, rstd = ctx.saved_tensors
        grad = torch.zeros_like(hidden)
        r = g.float() * rstd[:, None] if ctx.normalize else g
        _pool_backward(hidden, hidden.stride(0), hidden.stride(1), idx, rstd, r, grad, ctx.normalize)
        return grad, None, None


# ----------------------------------------------------------------------------- entry points
# Arguments arrive validated from e5x.kernels (shapes, dtypes, indices, temperature).


def _ready(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def last_token_pool_triton(hidden: torch.Tensor, idx: torch.Tensor, normalize: bool) -> torch.Tensor:
    return _Pool.apply(_ready(hidden), idx.contiguous(), normalize)


def pooled_info_nce_triton(
    q_hidden: torch.Tensor,
    d_hidden: torch.Tensor,
    q_idx: torch.Tensor,
    d_idx: torch.Tensor,
    pos: torch.Tensor,
    temperature: float,
    reduction: str,
    want_embeddings: bool = True,
    groups: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    qg, dg = groups if groups is not None else (None, None)
    return _PooledInfoNCE.apply(
        _ready(q_hidden),
        _ready(d_hidden),
        q_idx.contiguous(),
        d_idx.contiguous(),
        pos.contiguous(),
        temperature,
        reduction,
        True,
        want_embeddings,
        _infonce_mode(reduction, q_hidden, d_hidden),
        qg,
        dg,
    )


def info_nce_triton(
    q: torch.Tensor,
    d: torch.Tensor,
    pos: torch.Tensor,
    temperature: float,
    normalize: bool,
    reduction: str,
    groups: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    # Embeddings are hidden states of length 1: the same kernels, pooling position 0.
    zq = torch.zeros((q.shape[0],), dtype=torch.int64, device=q.device)
    zd = torch.zeros((d.shape[0],), dtype=torch.int64, device=d.device)
    loss, _, _ = _PooledInfoNCE.apply(
        _ready(q).unsqueeze(1),
        _ready(d).unsqueeze(1),
        zq,
        zd,
        pos.contiguous(),
        temperature,
        reduction,
        normalize,
        False,
        _infonce_mode(reduction, q, d),
        *(groups if groups is not None else (None, None)),
    )
    return loss


__all__ = ["info_nce_triton", "last_token_pool_triton", "pooled_info_nce_triton"]
