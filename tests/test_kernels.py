"""Pooled InfoNCE: the Triton kernels against a float64 torch reference, and bad input.

On CPU the kernels run under TRITON_INTERPRET=1 (set by conftest.py), so shapes stay small.
With E5X_TEST_GPU=1 the same tests run the compiled kernels on CUDA, plus a test at the
recipe's hidden size (kernels/gpu_check.sh does that).

Tolerances (relative, norm-wise for gradients), against float64 math on the same inputs:
- fp32 inputs: loss 1e-5, gradients 1e-4. Every score is an fp32-accumulated dot product
  (H <= 64 terms here) times 1/tau = 50; the fp32 rounding of a logit is ~1e-6 relative,
  and exp/log/sum of a handful of terms keep that order. 1e-4 leaves room for the
  summation order of the gradient GEMMs.
- bf16 inputs: loss 1e-3 and gradients 1e-2 (the kernels' accuracy targets). Scores use the exact bf16
  inputs with fp32 accumulation, so the loss is nearly fp32-exact; the gradients go through
  one bf16 rounding of dS (2^-9 relative) and the final bf16 cast of the gradient itself
  (2^-9), ~0.3% together.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import e5x.kernels as K
import pytest
import torch

GPU = os.environ.get("E5X_TEST_GPU") == "1"
DEVICE = torch.device("cuda" if GPU else "cpu")
TOL = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (1e-3, 1e-2)}


def rel(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-30) -> float:
    """Norm-wise relative error of a against b; |b| below `floor` counts as `floor`."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(floor))


def leaf(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.detach().to(DEVICE, dtype).clone().requires_grad_(True)


def make_mask(lengths: list[int], seq: int, side: str) -> torch.Tensor:
    m = torch.zeros(len(lengths), seq, dtype=torch.long)
    for i, n in enumerate(lengths):
        if side == "right":
            m[i, :n] = 1
        else:
            m[i, seq - n :] = 1
    return m.to(DEVICE)


def lengths_for(b: int, seq: int, gen: torch.Generator) -> list[int]:
    # always include the extremes 1 and seq when the batch has room for them
    base = torch.randint(1, seq + 1, (b,), generator=gen).tolist()
    if b >= 1:
        base[0] = seq
    if b >= 2:
        base[-1] = 1
    return base


@dataclass
class Case:
    name: str
    bq: int
    k: int  # hard negatives per query
    h: int
    seq: int
    side: str = "right"
    extra_before: int = 0  # documents from "other ranks" before ours
    extra_after: int = 0
    reduction: str = "mean"
    explicit_index: bool = False
    use_last_index: bool = False


CASES = [
    Case("bq1_k0_single_token", bq=1, k=0, h=20, seq=1, extra_after=2),
    Case("odd_h_left_pad_k1", bq=3, k=1, h=37, seq=5, side="left"),
    Case("k3_right_pad_none", bq=4, k=3, h=33, seq=4, reduction="none"),
    Case("cross_rank_k2", bq=3, k=2, h=24, seq=3, extra_before=4, extra_after=2, side="left"),
    Case(
        "explicit_index_sum",
        bq=5,
        k=0,
        h=48,
        seq=3,
        extra_after=3,
        reduction="sum",
        explicit_index=True,
        use_last_index=True,
    ),
]


def build(case: Case, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    g = case.k + 1
    n_local = case.bq * g
    bd = case.extra_before + n_local + case.extra_after
    qh = torch.randn(case.bq, case.seq, case.h, generator=gen)
    dh = torch.randn(bd, case.seq, case.h, generator=gen)
    # correlate positives with their queries so the loss is not just log(Bd)
    qm = make_mask(lengths_for(case.bq, case.seq, gen), case.seq, case.side)
    dm = make_mask(lengths_for(bd, case.seq, gen), case.seq, "right" if case.side == "left" else "left")
    q_last = K.last_token_index(qm).cpu()
    d_last = K.last_token_index(dm).cpu()
    for i in range(case.bq):
        p = case.extra_before + i * g
        dh[p, d_last[p]] += 0.15 * qh[i, q_last[i]]
    kwargs: dict = {"reduction": case.reduction}
    if case.explicit_index:
        kwargs["positive_index"] = (torch.randperm(n_local, generator=gen)[: case.bq]).to(DEVICE)
        kwargs["positive_offset"] = case.extra_before
    elif case.extra_before or case.extra_after:
        kwargs["group_size"] = g
        kwargs["positive_offset"] = case.extra_before
    if case.use_last_index:
        masks = dict(q_last_index=q_last.to(DEVICE), d_last_index=d_last.to(DEVICE))
    else:
        masks = dict(q_mask=qm, d_mask=dm)
    qh = qh.to(DEVICE, dtype)
    dh = dh.to(DEVICE, dtype)
    return qh, dh, masks, kwargs, (q_last, d_last)


def run(qh, dh, masks, kwargs, backend, upstream=None):
    qh = qh.detach().clone().requires_grad_(True)
    dh = dh.detach().clone().requires_grad_(True)
    loss = K.pooled_info_nce(qh, dh, **masks, **kwargs, backend=backend)
    (loss if upstream is None else (loss * upstream).sum()).backward()
    return loss.detach(), qh.grad, dh.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_pooled_info_nce_matches_float64(case: Case, dtype: torch.dtype) -> None:
    qh, dh, masks, kwargs, (q_last, d_last) = build(case, dtype)
    upstream = None
    if case.reduction == "none":  # per-row upstream weights exercise the per-row coefficients
        upstream = torch.linspace(0.5, 2.0, case.bq, device=DEVICE)
    loss, gq, gd = run(qh, dh, masks, kwargs, "triton", upstream)
    ref_loss, ref_gq, ref_gd = run(
        qh.double(), dh.double(), masks, kwargs, "torch", None if upstream is None else upstream.double()
    )
    loss_tol, grad_tol = TOL[dtype]
    assert loss.dtype == torch.float32
    # floor 1: a loss near 0 is a difference of logits up to 1/tau = 50, whose absolute
    # rounding (fp32 spacing at 50 is 3.8e-6) does not shrink with the loss
    assert rel(loss, ref_loss, floor=1.0) <= loss_tol, (loss, ref_loss)
    assert gq.dtype == dtype and gd.dtype == dtype
    assert rel(gq, ref_gq) <= grad_tol
    assert rel(gd, ref_gd) <= grad_tol
    # only the pooled positions receive gradient, all others are exactly zero
    for g, last in ((gq, q_last), (gd, d_last)):
        keep = torch.zeros(g.shape[:2], dtype=torch.bool)
        keep[torch.arange(g.shape[0]), last] = True
        assert torch.count_nonzero(g[~keep.to(g.device)]) == 0
        assert torch.count_nonzero(g[keep.to(g.device)]) > 0


def test_default_group_layout_and_hard_negatives() -> None:
    """positive_index=None with Bd = 3 Bq means positives at 0, 3, 6, ...; the hard
    negatives of query i are negatives for every query (they enter every row's LSE)."""
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(4, 16, generator=gen, dtype=torch.float64)
    d = torch.randn(12, 16, generator=gen, dtype=torch.float64)
    got = K.info_nce(q, d, temperature=0.05, reduction="none", backend="torch")
    qn = torch.nn.functional.normalize(q, dim=-1)
    dn = torch.nn.functional.normalize(d, dim=-1)
    s = qn @ dn.T / 0.05
    want = torch.logsumexp(s, dim=1) - s[torch.arange(4), torch.arange(4) * 3]
    torch.testing.assert_close(got, want)
    if K._checks.triton_usable(q.to(DEVICE)):
        tri = K.info_nce(
            q.float().to(DEVICE), d.float().to(DEVICE), temperature=0.05, reduction="none", backend="triton"
        )
        torch.testing.assert_close(tri.double().cpu(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_info_nce_on_embeddings(normalize: bool, reduction: str) -> None:
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(5, 40, generator=gen)
    d = torch.randn(10, 40, generator=gen)
    if not normalize:  # keep raw logits in a sane range
        q, d = q * 0.05, d * 0.05
    up = torch.rand(5, generator=gen) if reduction == "none" else None
    out = {}
    for backend, dtype in (("triton", torch.float32), ("torch", torch.float64)):
        qq = leaf(q, dtype)
        dd = leaf(d, dtype)
        loss = K.info_nce(qq, dd, temperature=0.02, normalize=normalize, reduction=reduction, backend=backend)
        (loss if up is None else (loss * up.to(DEVICE, dtype)).sum()).backward()
        out[backend] = (loss.detach(), qq.grad, dd.grad)
    for a, b in zip(out["triton"], out["torch"]):
        assert rel(a, b) <= 1e-4


@pytest.mark.parametrize("normalize", [True, False])
def test_last_token_pool(normalize: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(4, 6, 19, generator=gen)
    mask = make_mask([6, 1, 3, 5], 6, "right")
    mask[2] = torch.tensor([1, 0, 1, 0, 0, 0])  # a hole: the highest 1 wins
    w = torch.randn(4, 19, generator=gen)
    res = {}
    for backend, dtype in (("triton", torch.float32), ("torch", torch.float64)):
        x = leaf(h, dtype)
        e = K.last_token_pool(x, mask, normalize=normalize, backend=backend)
        (e * w.to(DEVICE, dtype)).sum().backward()
        res[backend] = (e.detach(), x.grad)
    assert rel(res["triton"][0], res["torch"][0]) <= 1e-6
    assert rel(res["triton"][1], res["torch"][1]) <= 1e-5
    last = torch.tensor([5, 0, 2, 4])
    want = h[torch.arange(4), last].double()
    if normalize:
        want = torch.nn.functional.normalize(want, dim=-1)
    torch.testing.assert_close(res["triton"][0].double().cpu(), want)
    g = res["triton"][1].cpu()
    keep = torch.zeros(4, 6, dtype=torch.bool)
    keep[torch.arange(4), last] = True
    assert torch.count_nonzero(g[~keep]) == 0
    if normalize:
        norms = res["triton"][0].norm(dim=-1)
        torch.testing.assert_close(norms.cpu(), torch.ones(4), rtol=1e-6, atol=1e-6)


def test_left_and_right_padding_pool_the_same_token() -> None:
    gen = torch.Generator().manual_seed(4)
    tokens = [torch.randn(n, 8, generator=gen) for n in (3, 1, 5)]
    right = torch.zeros(3, 5, 8)
    left = torch.zeros(3, 5, 8)
    for i, t in enumerate(tokens):
        right[i, : len(t)] = t
        left[i, 5 - len(t) :] = t
    rm = make_mask([3, 1, 5], 5, "right")
    lm = make_mask([3, 1, 5], 5, "left")
    for backend in ("torch", "triton"):
        a = K.last_token_pool(right.to(DEVICE), rm, normalize=True, backend=backend)
        b = K.last_token_pool(left.to(DEVICE), lm, normalize=True, backend=backend)
        torch.testing.assert_close(a, b)
        want = torch.nn.functional.normalize(torch.stack([t[-1] for t in tokens]), dim=-1)
        torch.testing.assert_close(a.cpu(), want)


def test_return_embeddings_are_differentiable() -> None:
    """A loss that also uses the returned embeddings gets the same gradients as the reference."""
    case = CASES[1]
    qh, dh, masks, kwargs, _ = build(case, torch.float32, seed=5)
    grads = {}
    for backend, dtype in (("triton", torch.float32), ("torch", torch.float64)):
        q, d = leaf(qh, dtype), leaf(dh, dtype)
        loss, qe, de = K.pooled_info_nce(q, d, **masks, **kwargs, return_embeddings=True, backend=backend)
        assert qe.shape == (q.shape[0], q.shape[2]) and de.shape == (d.shape[0], d.shape[2])
        (loss + 0.3 * qe[:, 0].sum() - 0.2 * de[:, 1].sum()).backward()
        grads[backend] = (loss.detach(), qe.detach(), de.detach(), q.grad, d.grad)
    for a, b in zip(grads["triton"], grads["torch"]):
        assert rel(a, b) <= 1e-4


MODES = ["fused", "lean", "backward"]


@pytest.mark.parametrize("mode", MODES)
def test_backward_in_several_chunks(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """A tiny chunk budget forces the gradient through several chunks, in every mode: fused
    (mean/sum: gradients formed in the forward from stored score tiles, backward scales by
    the upstream scalar, here 2.5), lean (query-row chunks, then document-column chunks with
    recomputed scores and no fp32 document accumulator) and recompute-in-backward."""
    monkeypatch.setenv("E5X_INFONCE_CHUNK_MIB", "0.0001")
    monkeypatch.setenv("E5X_INFONCE_MODE", mode)
    gen = torch.Generator().manual_seed(6)
    bq = 40 if not GPU else 300
    q = torch.randn(bq, 24, generator=gen)
    d = torch.randn(2 * bq + 3, 24, generator=gen)  # + 3: a last column chunk that is not full
    out = {}
    for backend, dtype in (("triton", torch.float32), ("torch", torch.float64)):
        qq = leaf(q, dtype)
        dd = leaf(d, dtype)
        loss = K.info_nce(qq, dd, backend=backend)
        (2.5 * loss).backward()
        out[backend] = (loss.detach(), qq.grad, dd.grad)
    for a, b in zip(out["triton"], out["torch"]):
        assert rel(a, b) <= 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("need", ["both", "queries", "documents"])
def test_lean_mode_pooled_matches_float64(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, need: str) -> None:
    """Lean mode on hidden states with padding, hard and cross-rank negatives, in several
    row and column chunks, with gradients wanted for both sides or only one (a frozen side
    skips its pass). Same tolerances as the default mode (see the module docstring)."""
    monkeypatch.setenv("E5X_INFONCE_CHUNK_MIB", "0.0001")
    monkeypatch.setenv("E5X_INFONCE_MODE", "lean")
    case = Case("lean", bq=20, k=1, h=40, seq=3, side="left", extra_before=5, extra_after=6)
    qh, dh, masks, kwargs, (q_last, d_last) = build(case, dtype, seed=3)
    got, want = [], []
    for backend, q, d, out in (("triton", qh, dh, got), ("torch", qh.double(), dh.double(), want)):
        q = q.detach().clone().requires_grad_(need != "documents")
        d = d.detach().clone().requires_grad_(need != "queries")
        loss = K.pooled_info_nce(q, d, **masks, **kwargs, backend=backend)
        loss.backward()
        out += [loss.detach(), q.grad, d.grad]
    loss_tol, grad_tol = TOL[dtype]
    assert rel(got[0], want[0], floor=1.0) <= loss_tol
    for g, ref in zip(got[1:], want[1:]):
        assert (g is None) == (ref is None)
        if g is not None:
            assert g.dtype == dtype and rel(g, ref) <= grad_tol


def test_unknown_mode_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    if not K._checks.triton_usable(torch.zeros(1, device=DEVICE)):
        pytest.skip("needs the Triton path")
    monkeypatch.setenv("E5X_INFONCE_MODE", "fast")
    q = leaf(torch.randn(2, 16), torch.float32)
    with pytest.raises(ValueError, match="E5X_INFONCE_MODE must be auto, fused, lean or backward, got 'fast'"):
        K.info_nce(q, torch.randn(4, 16, device=DEVICE), backend="triton")


@pytest.mark.parametrize(
    "available, want", [(float("inf"), "fused"), (2 * 4 * 8 * 16, "fused"), (2 * 4 * 8 * 16 - 1, "lean")]
)
def test_auto_mode_goes_lean_when_the_accumulator_would_not_fit(
    monkeypatch: pytest.MonkeyPatch, available: float, want: str
) -> None:
    """auto = fused while its fp32 [Bd, H] accumulator (here 4 * 8 * 16 bytes) takes at most
    half of the available device memory, else lean; the loss and gradients stay right."""
    if not K._checks.triton_usable(torch.zeros(1, device=DEVICE)):
        pytest.skip("needs the Triton path")
    import e5x.kernels.triton_pooled_info_nce as T

    monkeypatch.delenv("E5X_INFONCE_MODE", raising=False)
    monkeypatch.setattr(T, "_available_bytes", lambda device: available)
    taken = []
    monkeypatch.setattr(T, "_column_pass", lambda *a, _orig=T._column_pass: (taken.append("lean"), _orig(*a))[1])
    gen = torch.Generator().manual_seed(4)
    q, d = torch.randn(4, 16, generator=gen), torch.randn(8, 16, generator=gen)
    out = {}
    for backend, dtype in (("triton", torch.float32), ("torch", torch.float64)):
        qq, dd = leaf(q, dtype), leaf(d, dtype)
        loss = K.info_nce(qq, dd, backend=backend)
        loss.backward()
        out[backend] = (loss.detach(), qq.grad, dd.grad)
    assert (taken == ["lean"]) == (want == "lean")
    for a, b in zip(out["triton"], out["torch"]):
        assert rel(a, b) <= 1e-4


def test_no_grad_forward_and_reference_agree_on_backend_auto() -> None:
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(3, 2, 16, generator=gen).to(DEVICE)
    d = torch.randn(6, 2, 16, generator=gen).to(DEVICE)
    with torch.no_grad():
        a = K.pooled_info_nce(q, d, backend="auto")
        b = K.pooled_info_nce(q, d, backend="torch")
    assert rel(a, b) <= 1e-5


def test_caller_autocast_does_not_round_fp32_embeddings() -> None:
    """The trainer calls info_nce on fp32 embeddings inside bf16 autocast; the op's internal
    GEMMs must not be autocast to bf16 (that would cost ~3 decimal digits)."""
    gen = torch.Generator().manual_seed(9)
    q = torch.randn(5, 32, generator=gen)
    d = torch.randn(10, 32, generator=gen)
    out = {}
    for backend, dtype in (("triton", torch.float32), ("torch", torch.float32), ("ref64", torch.float64)):
        qq, dd = leaf(q, dtype), leaf(d, dtype)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=backend != "ref64"):
            backend = "torch" if backend == "ref64" else backend
            loss = K.info_nce(qq, dd, backend=backend)
        loss.backward()
        out[(backend, dtype)] = (loss.detach(), qq.grad, dd.grad)
    want = out[("torch", torch.float64)]
    for got in (out[("triton", torch.float32)], out[("torch", torch.float32)]):
        for a, b in zip(got, want):
            assert rel(a, b) <= 1e-4


# ----------------------------------------------------------------------------- bad input


def _qd(bq: int = 2, bd: int = 4, seq: int = 3, h: int = 8):
    return torch.randn(bq, seq, h), torch.randn(bd, seq, h)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_all_zero_mask_row_is_an_error(backend: str) -> None:
    q, d = _qd()
    qm = torch.ones(2, 3, dtype=torch.long)
    dm = torch.ones(4, 3, dtype=torch.long)
    dm[2] = 0
    with pytest.raises(ValueError, match=r"all-zero row.*rows 2"):
        K.pooled_info_nce(q, d, qm, dm, backend=backend)
    with pytest.raises(ValueError, match="all-zero"):
        K.last_token_pool(q, torch.zeros(2, 3), backend=backend)


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=-0.02), ValueError, "temperature"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(positive_index=torch.tensor([0, 4])), ValueError, "query 1 is document 4"),
        (dict(positive_index=torch.tensor([0, 1, 2])), ValueError, r"shape \[2\]"),
        (dict(positive_index=torch.tensor([0.0, 1.0])), TypeError, "integer"),
        (dict(positive_offset=3), ValueError, "group_size"),
        (dict(positive_offset=-1), ValueError, "positive_offset"),
        (dict(group_size=2, positive_offset=3), ValueError, "query 1 is document 5.*outside the 4 documents"),
        (dict(reduction="avg"), ValueError, "reduction"),
        (dict(backend="cuda"), ValueError, "backend"),
        (dict(q_last_index=torch.tensor([0, 3])), ValueError, r"last_index\[1\] = 3"),
        (dict(q_mask=torch.ones(2, 4)), ValueError, "attention_mask must have shape"),
    ],
)
def test_bad_arguments(kwargs: dict, exc: type, pattern: str) -> None:
    q, d = _qd()
    with pytest.raises(exc, match=pattern):
        K.pooled_info_nce(q, d, **kwargs)


def test_mismatched_shapes_and_dtypes() -> None:
    q, d = _qd()
    with pytest.raises(ValueError, match="hidden sizes differ"):
        K.pooled_info_nce(q, torch.randn(4, 3, 9))
    with pytest.raises(TypeError, match="dtypes differ"):
        K.pooled_info_nce(q, d.double())
    with pytest.raises(ValueError, match=r"\[batch, seq_len, hidden\]"):
        K.pooled_info_nce(q[:, 0], d)
    with pytest.raises(ValueError, match="hidden sizes differ"):
        K.info_nce(torch.randn(2, 8), torch.randn(4, 7))
    with pytest.raises(ValueError, match="at least one document per query"):
        K.info_nce(torch.randn(4, 8), torch.randn(3, 8))
    with pytest.raises(TypeError, match="floating"):
        K.info_nce(torch.ones(2, 8, dtype=torch.long), torch.ones(4, 8, dtype=torch.long))


def test_import_is_light_and_torch_backend_needs_no_triton() -> None:
    """`import e5x.kernels` does not import triton; without triton the reference still works
    and backend='triton' says why it cannot run."""
    code = r"""
import sys
import e5x, e5x.kernels
assert "triton" not in sys.modules, "triton imported eagerly"
sys.modules["triton"] = None  # make `import triton` fail like on a machine without it
import torch
import e5x.kernels as K
q, d = torch.randn(2, 8), torch.randn(4, 8)
print(float(K.info_nce(q, d)))
try:
    K.info_nce(q, d, backend="triton")
except RuntimeError as e:
    assert "triton cannot be imported" in str(e), e
    print("clear error")
else:
    raise SystemExit("backend='triton' ran without triton")
"""
    env = dict(os.environ)
    res = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "clear error" in res.stdout


# ----------------------------------------------------------------------------- GPU only


@pytest.mark.skipif(not GPU, reason="E5X_TEST_GPU=1 runs this at the recipe's hidden size on CUDA")
@pytest.mark.parametrize("bq", [1, 257])
def test_recipe_size_bf16_on_gpu(bq: int) -> None:
    torch.manual_seed(8)
    h, seq = 4096, 7
    qh = torch.randn(bq, seq, h, device=DEVICE, dtype=torch.bfloat16)
    dh = torch.randn(2 * bq + 3, seq, h, device=DEVICE, dtype=torch.bfloat16)
    qm = make_mask(lengths_for(bq, seq, torch.Generator().manual_seed(0)), seq, "left")
    dm = make_mask(lengths_for(2 * bq + 3, seq, torch.Generator().manual_seed(1)), seq, "right")
    kwargs = dict(group_size=2)
    loss, gq, gd = run(qh, dh, dict(q_mask=qm, d_mask=dm), kwargs, "triton")
    ref, rq, rd = run(qh.double(), dh.double(), dict(q_mask=qm, d_mask=dm), kwargs, "torch")
    assert rel(loss, ref) <= 1e-3
    assert rel(gq, rq) <= 1e-2 and rel(gd, rd) <= 1e-2


@pytest.mark.skipif(not GPU, reason="CUDA memory statistics")
def test_lean_mode_needs_no_document_accumulator_on_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lean mode's peak above its inputs is the returned gradients plus the chunk budget (plus
    a few [B] vectors); fused mode also holds an fp32 [Bd, H] accumulator."""
    bq, bd, h, budget_mib = 1024, 2048, 4096, 16
    monkeypatch.setenv("E5X_INFONCE_CHUNK_MIB", str(budget_mib))
    gen = torch.Generator(device="cuda").manual_seed(9)
    q = torch.randn(bq, h, device=DEVICE, dtype=torch.bfloat16, generator=gen).requires_grad_(True)
    d = torch.randn(bd, h, device=DEVICE, dtype=torch.bfloat16, generator=gen).requires_grad_(True)
    grads = (bq + bd) * h * 2
    extra = {}
    for mode in ("fused", "lean"):
        monkeypatch.setenv("E5X_INFONCE_MODE", mode)
        for _ in range(2):  # the first call compiles, autotunes and creates cuBLAS workspaces
            q.grad = d.grad = None
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            K.info_nce(q, d, backend="triton").backward()
            torch.cuda.synchronize()
            extra[mode] = torch.cuda.max_memory_allocated() - base
    slack = 4 * 2**20
    assert extra["lean"] <= grads + budget_mib * 2**20 + slack, extra
    assert extra["fused"] >= grads + 4 * bd * h, extra  # the measurement sees the accumulator


def test_kernels_compile_for_hopper_without_a_gpu() -> None:
    """Triton's compiler and bundled ptxas run on CPU: compiling every kernel for sm_90
    catches errors the interpreter does not see (globals, compiled-language typing,
    shared-memory size of the tile configs) before a GPU ever runs them."""
    pytest.importorskip("triton")
    script = os.path.join(os.path.dirname(__file__), "..", "kernels", "compile_check.py")
    if not os.path.exists(script):
        pytest.skip("kernels/ workbench not present (tests run outside the repository)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run(
        [sys.executable, script, "--arch", "90"], check=False, capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "kernel variants compiled for sm_90" in res.stdout


# ----------------------------------------------------------------------------- false negatives


def masked_groups(bq: int, bd: int, pos: torch.Tensor, gen: torch.Generator, n_ids: int = 5):
    """Group ids with many repeats (5 distinct texts among Bd documents, as labels of a
    classification batch): each query's first id is its positive's, the second another id
    or -1 (none); some documents carry -1 (no group). Returns (q [Bq, 2], d [Bd])."""
    d = torch.randint(0, n_ids, (bd,), generator=gen)
    d[torch.randperm(bd, generator=gen)[: max(1, bd // 8)]] = -1
    d[pos] = torch.randint(0, n_ids, (bq,), generator=gen)  # positives always have an id
    second = torch.randint(-1, n_ids, (bq,), generator=gen)
    return torch.stack([d[pos], second], dim=1), d


def slow_mask(qg: torch.Tensor, dg: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The masking rule spelled out element by element (independent of the reference's)."""
    out = torch.zeros(qg.shape[0], dg.shape[0], dtype=torch.bool)
    for i in range(qg.shape[0]):
        for j in range(dg.shape[0]):
            ids = {int(g) for g in qg[i] if g >= 0}
            out[i, j] = j != int(pos[i]) and int(dg[j]) >= 0 and int(dg[j]) in ids
    return out


def test_false_negative_reference_and_count_follow_the_rule() -> None:
    gen = torch.Generator().manual_seed(11)
    bq, bd = 7, 23
    pos = torch.randperm(bd, generator=gen)[:bq]
    qg, dg = masked_groups(bq, bd, pos, gen)
    qg[0, 1] = qg[0, 0]  # the same id twice counts once
    want = slow_mask(qg, dg, pos)
    assert torch.equal(K.reference.false_negative_mask(qg, dg, pos), want)
    assert K.count_false_negatives(qg, dg, pos) == int(want.sum()) > 0
    assert K.count_false_negatives(qg[:, 0], dg, pos) == int(slow_mask(qg[:, :1], dg, pos).sum())
    # The loss is InfoNCE over the columns left in, written out with logsumexp.
    q = torch.randn(bq, 12, generator=gen, dtype=torch.float64)
    d = torch.randn(bd, 12, generator=gen, dtype=torch.float64)
    s = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(d, dim=-1).T / 0.05
    want_loss = torch.stack([torch.logsumexp(s[i][~want[i]], 0) - s[i, pos[i]] for i in range(bq)])
    got = K.info_nce(q, d, pos, temperature=0.05, reduction="none", q_groups=qg, d_groups=dg, backend="torch")
    torch.testing.assert_close(got, want_loss)
    plain = K.info_nce(q, d, pos, temperature=0.05, reduction="none", backend="torch")
    masked_rows = want.any(dim=1)
    assert torch.all(got[masked_rows] < plain[masked_rows]) and torch.equal(got[~masked_rows], plain[~masked_rows])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", MODES)
def test_false_negative_masking_matches_float64_in_every_mode(
    monkeypatch: pytest.MonkeyPatch, mode: str, dtype: torch.dtype
) -> None:
    """Pooled hidden states with padding, hard negatives and documents of "other ranks"
    around ours, duplicates everywhere, a chunk budget small enough for several row and
    column chunks: fused (mask in the stored score tiles), lean and backward (mask applied
    again to recomputed tiles). Tolerances as in the module docstring."""
    monkeypatch.setenv("E5X_INFONCE_CHUNK_MIB", "0.0001")
    monkeypatch.setenv("E5X_INFONCE_MODE", mode)
    case = Case("masked", bq=19, k=1, h=24, seq=3, side="left", extra_before=5, extra_after=6)
    qh, dh, masks, kwargs, _ = build(case, dtype, seed=7)
    pos = torch.arange(case.bq) * 2 + case.extra_before
    bd = dh.shape[0]
    qg, dg = masked_groups(case.bq, bd, pos, torch.Generator().manual_seed(8))
    assert int(slow_mask(qg, dg, pos).sum()) > case.bq  # many documents are masked
    groups = dict(q_groups=qg.to(DEVICE), d_groups=dg.to(DEVICE))
    loss, gq, gd = run(qh, dh, masks, {**kwargs, **groups}, "triton")
    ref_loss, ref_gq, ref_gd = run(qh.double(), dh.double(), masks, {**kwargs, **groups}, "torch")
    loss_tol, grad_tol = TOL[dtype]
    assert rel(loss, ref_loss, floor=1.0) <= loss_tol, (loss, ref_loss)
    assert rel(gq, ref_gq) <= grad_tol and rel(gd, ref_gd) <= grad_tol
    unmasked, _, _ = run(qh.double(), dh.double(), masks, kwargs, "torch")
    assert float(unmasked - ref_loss) > 0.05  # the mask really removed probability mass


def test_false_negative_masking_per_row_upstream_and_embeddings() -> None:
    """reduction="none" with per-row weights (backward mode) on plain embeddings, the
    grouped layout, one query with a single id and documents without any."""
    gen = torch.Generator().manual_seed(9)
    bq, bd = 6, 18
    pos = torch.arange(bq) * 3
    qg, dg = masked_groups(bq, bd, pos, gen, n_ids=3)
    # Same id, same text, (nearly) the same embedding: the masked documents score as high
    # as the positive, so leaving them in would move the loss and the gradients a lot.
    protos = torch.randn(4, 20, generator=gen)
    d = protos[dg] + 0.1 * torch.randn(bd, 20, generator=gen)
    q = protos[qg[:, 0]] + 0.5 * torch.randn(bq, 20, generator=gen)
    plain = K.info_nce(q.double(), d.double(), temperature=0.1, reduction="none", backend="torch")
    masked = K.info_nce(
        q.double(), d.double(), temperature=0.1, reduction="none", q_groups=qg[:, :1], d_groups=dg, backend="torch"
    )
    assert float((plain - masked).min()) > 0.5, (plain, masked)
    up = torch.rand(bq, generator=gen) + 0.5
    out = {}
    for backend, dtype in (("triton", torch.float32), ("torch", torch.float64)):
        qq, dd = leaf(q, dtype), leaf(d, dtype)
        loss = K.info_nce(
            qq,
            dd,
            temperature=0.1,
            reduction="none",
            q_groups=qg[:, :1].to(DEVICE),
            d_groups=dg.to(DEVICE),
            backend=backend,
        )
        (loss * up.to(DEVICE, dtype)).sum().backward()
        out[backend] = (loss.detach(), qq.grad, dd.grad)
    (loss, gq, gd), (ref_loss, ref_gq, ref_gd) = out["triton"], out["torch"]
    assert rel(loss, ref_loss, floor=1.0) <= 1e-5  # losses near 0: absolute rounding of logits
    assert rel(gq, ref_gq) <= 1e-4 and rel(gd, ref_gd) <= 1e-4


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        (dict(q_groups=torch.zeros(2, dtype=torch.long)), ValueError, "both q_groups and d_groups"),
        (dict(q_groups=torch.zeros(2), d_groups=torch.zeros(4, dtype=torch.long)), TypeError, "integer"),
        (
            dict(q_groups=torch.zeros(2, 3, dtype=torch.long), d_groups=torch.zeros(4, dtype=torch.long)),
            ValueError,
            r"K <= 2",
        ),
        (
            dict(q_groups=torch.zeros(2, dtype=torch.long), d_groups=torch.zeros(3, dtype=torch.long)),
            ValueError,
            r"d_groups must have shape \[4\]",
        ),
    ],
)
def test_bad_group_arguments(kwargs: dict, exc: type, pattern: str) -> None:
    q, d = _qd()
    with pytest.raises(exc, match=pattern):
        K.pooled_info_nce(q, d, **kwargs)
