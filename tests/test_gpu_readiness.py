"""What a first GPU run would trip on, checked on CPU (issue 17): the Triton path under
TRITON_INTERPRET=1, host syncs counted by a CPU-side harness, fallbacks and autotune keys.

Tolerances: fp32 inputs against the float64 reference, 1e-4 relative (as test_kernels.py).
"""

from __future__ import annotations

import logging
import os
import sys

import pytest

torch = pytest.importorskip("torch")

import e5x.kernels as K
from e5x.kernels import _settings as S

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or not K._checks.triton_usable(torch.zeros(1)),
    reason="the Triton path on CPU needs TRITON_INTERPRET=1 and triton",
)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def leaf(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return x.to(dtype).detach().clone().requires_grad_(True)


def triton_module():
    import e5x.kernels.triton_pooled_info_nce as T

    return T


# ----------------------------------------------------------------------------- 1. no gradient copy


@pytest.mark.parametrize("op", ["info_nce", "pooled_info_nce"])
@pytest.mark.parametrize("mode", ["fused", "lean"])
def test_grad_is_the_ops_own_buffer_no_copy(monkeypatch: pytest.MonkeyPatch, op: str, mode: str) -> None:
    """The gradients formed in the forward reach .grad without autograd cloning them (ctx no
    longer holds them): .grad shares storage with the op's output."""
    T = triton_module()
    made = []
    real = T._fused_loss_and_grads

    def recording(*a, **kw):  # type: ignore[no-untyped-def]
        lse2, gq, gd = real(*a, **kw)
        made.append((gq.data_ptr(), gd.data_ptr()))
        return lse2, gq, gd

    monkeypatch.setattr(T, "_fused_loss_and_grads", recording)
    gen = torch.Generator().manual_seed(1)
    if op == "info_nce":
        q, d = leaf(torch.randn(5, 24, generator=gen)), leaf(torch.randn(10, 24, generator=gen))
        loss = K.info_nce(q, d, backend="triton", mode=mode)
    else:
        q, d = leaf(torch.randn(5, 3, 24, generator=gen)), leaf(torch.randn(10, 2, 24, generator=gen))
        loss = K.pooled_info_nce(q, d, backend="triton", mode=mode)
    loss.backward()
    assert made and made[0] == (q.grad.data_ptr(), d.grad.data_ptr())


@pytest.mark.parametrize("scale", [1.0, 3.0, 0.0])
def test_fused_backward_scales_by_the_upstream_gradient(scale: float) -> None:
    """The upstream scalar is applied on the device (no host read of it): 3 * loss gives
    3x the gradients, 0 * loss zero, in pooled and embedding form alike."""
    gen = torch.Generator().manual_seed(2)
    qh, dh = torch.randn(4, 3, 20, generator=gen), torch.randn(8, 2, 20, generator=gen)
    out = {}
    for backend, dtype in (("triton", torch.float32), ("torch", torch.float64)):
        q, d = leaf(qh, dtype), leaf(dh, dtype)
        loss, qe, de = K.pooled_info_nce(q, d, backend=backend, return_embeddings=True, mode="fused")
        (loss * scale + 0.5 * qe.sum()).backward()
        out[backend] = (q.grad, d.grad)
    for a, b in zip(out["triton"], out["torch"]):
        assert rel(a, b) <= 1e-4


# ----------------------------------------------------------------------------- 2. no host sync


class SyncCounter:
    """Counts what would make the host wait for the device when called from e5x.kernels'
    own code (Triton's interpreter moves tensors to numpy itself; that is not counted)."""

    METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        for name in self.METHODS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(getattr(torch.Tensor, name), name))
        for name in ("synchronize", "mem_get_info"):
            monkeypatch.setattr(torch.cuda, name, self._wrap(getattr(torch.cuda, name), f"cuda.{name}"))

    def _wrap(self, fn, name):  # type: ignore[no-untyped-def]
        counter = self

        def wrapped(*a, **kw):  # type: ignore[no-untyped-def]
            caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
            if "/e5x/kernels/" in caller:
                counter.calls.append(f"{name} from {caller.rsplit('/', 1)[-1]}:{sys._getframe(1).f_lineno}")
            return fn(*a, **kw)

        return wrapped


@pytest.mark.parametrize("mode", ["fused", "lean", "backward"])
def test_no_host_sync_in_forward_and_backward(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """With the value checks on the device (as on CUDA: E5X_KERNEL_CHECKS=auto is async
    there), info_nce and pooled_info_nce with masks, explicit positives and false-negative
    groups make no host sync in forward or backward."""
    monkeypatch.setenv("E5X_KERNEL_CHECKS", "async")
    gen = torch.Generator().manual_seed(3)
    q, d = leaf(torch.randn(6, 16, generator=gen)), leaf(torch.randn(12, 16, generator=gen))
    qh, dh = leaf(torch.randn(6, 4, 16, generator=gen)), leaf(torch.randn(12, 3, 16, generator=gen))
    q_mask = torch.ones(6, 4, dtype=torch.long)
    q_mask[1, 2:] = 0
    d_mask = torch.ones(12, 3, dtype=torch.long)
    d_mask[0, :1] = 0  # left padding
    pos = torch.arange(6) * 2
    q_groups, d_groups = torch.arange(6), torch.arange(12) // 2
    counter = SyncCounter(monkeypatch)
    loss = K.info_nce(q, d, pos, backend="triton", mode=mode, q_groups=q_groups, d_groups=d_groups)
    loss2 = K.pooled_info_nce(
        qh, dh, q_mask, d_mask, positive_index=pos, backend="triton", mode=mode, q_groups=q_groups, d_groups=d_groups
    )
    (loss + loss2).backward()
    assert counter.calls == []
    assert q.grad is not None and qh.grad is not None


def test_async_value_checks_still_stop_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E5X_KERNEL_CHECKS", "async")
    q, d = torch.randn(2, 16), torch.randn(4, 16)
    with pytest.raises(RuntimeError, match="E5X_KERNEL_CHECKS=sync"):
        K.info_nce(q, d, torch.tensor([0, 9]), backend="triton")
    monkeypatch.setenv("E5X_KERNEL_CHECKS", "sync")
    with pytest.raises(ValueError, match="positive of query 1 is document 9"):
        K.info_nce(q, d, torch.tensor([0, 9]), backend="triton")


def test_auto_mode_asks_the_driver_only_for_large_accumulators(monkeypatch: pytest.MonkeyPatch) -> None:
    """mem_get_info is a driver call: auto skips it while fused's accumulator is under 1/16
    of the card (its memory read once per device)."""
    T = triton_module()
    asked = []
    monkeypatch.setattr(T, "_total_bytes", lambda dev: 80 * 2**30)
    monkeypatch.setattr(T, "_available_bytes", lambda dev: asked.append(dev) or float("inf"))
    d = torch.zeros(4096, 4096, requires_grad=True)  # 64 MiB accumulator
    assert T._infonce_mode("mean", d, d) == "fused" and asked == []
    big = torch.zeros(1, 1, requires_grad=True).expand(2**20, 4096)  # 16 GiB accumulator
    assert T._infonce_mode("mean", big, big) == "fused" and len(asked) == 1


# ----------------------------------------------------------------------------- 3. GEMM fallback


def _fake_cuda_mm(monkeypatch: pytest.MonkeyPatch, exc: BaseException):  # type: ignore[no-untyped-def]
    T = triton_module()
    monkeypatch.setattr(T, "_MM_OUT_DTYPE", None)
    monkeypatch.setattr(T, "_is_cuda", lambda t: True)
    monkeypatch.setattr(S, "RUNTIME", {"gemm_path": None, "gemm_fallback": None})
    monkeypatch.setattr(S, "_warned", set())
    real_mm = torch.mm
    tried = []

    def mm(a, b, **kw):  # type: ignore[no-untyped-def]
        if "out_dtype" in kw:
            tried.append(1)
            raise exc
        return real_mm(a, b)

    monkeypatch.setattr(torch, "mm", mm)
    return T, tried


def test_gemm_fallback_is_logged_once_and_recorded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    T, tried = _fake_cuda_mm(monkeypatch, TypeError("mm() got an unexpected keyword argument 'out_dtype'"))
    a, b = torch.randn(3, 8).bfloat16(), torch.randn(8, 5).bfloat16()
    with caplog.at_level(logging.WARNING, logger="e5x.kernels"):
        for _ in range(3):
            out = T._mm_f32(a, b)
    assert out.dtype == torch.float32 and rel(out, a.float() @ b.float()) < 1e-2
    assert len(tried) == 1  # the switch is remembered, the failing call not repeated
    assert [r.getMessage() for r in caplog.records if "gemm fallback" in r.getMessage()] != []
    assert len([r for r in caplog.records if "gemm fallback" in r.getMessage()]) == 1
    info = K.runtime_info()
    assert "out_dtype" in info["gemm_fallback"] and "upcast" in info["gemm_path"]


def test_gemm_out_of_memory_is_raised_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    T, _ = _fake_cuda_mm(monkeypatch, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    a, b = torch.randn(3, 8).bfloat16(), torch.randn(8, 5).bfloat16()
    with pytest.raises(torch.OutOfMemoryError):
        T._mm_f32(a, b)
    assert T._MM_OUT_DTYPE is None and K.runtime_info()["gemm_fallback"] is None  # no switch
    T, _ = _fake_cuda_mm(monkeypatch, RuntimeError("CUDA error: out of memory"))
    with pytest.raises(RuntimeError, match="out of memory"):
        T._mm_f32(a, b)
    assert T._MM_OUT_DTYPE is None


# ----------------------------------------------------------------------------- 4. autotune keys


def test_autotune_keys_are_bucketed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tunes are keyed on power-of-two buckets of the rows/columns a launch covers: a ragged
    tail chunk and another rank's document count reuse the tune of the full ones."""
    T = triton_module()
    assert [T._bucket(n) for n in (1, 16, 17, 1000, 1024, 1025, 4090, 4096)] == [
        16,
        16,
        32,
        1024,
        1024,
        2048,
        4096,
        4096,
    ]
    for kernel in (T._lse_fwd, T._dscores):
        assert {"KEY_M", "KEY_N"} <= set(kernel.arg_names)
    monkeypatch.setattr(T, "INTERPRET", False)
    monkeypatch.setattr(T, "_TUNED", {})
    monkeypatch.setattr(T, "_autotune_enabled", lambda: True)
    for name, kernel in (("lse", T._lse_fwd), ("dscores", T._dscores)):
        tuner, meta = T._launcher(kernel, name, torch.bfloat16)
        assert meta is None
        assert "Bq" not in tuner.keys and "Bd" not in tuner.keys
        assert {"H", "KEY_M", "KEY_N"} <= set(tuner.keys)


def test_launches_pass_bucketed_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    T = triton_module()
    seen = []
    real = T._launcher

    class Spy:
        def __init__(self, kernel, name):  # type: ignore[no-untyped-def]
            self.kernel, self.name = kernel, name

        def __getitem__(self, grid):  # type: ignore[no-untyped-def]
            launch = self.kernel[grid]

            def run(*args, **kw):  # type: ignore[no-untyped-def]
                names = self.kernel.arg_names
                seen.append((self.name, args[names.index("KEY_M")], args[names.index("KEY_N")]))
                return launch(*args, **kw)

            return run

    monkeypatch.setattr(T, "_launcher", lambda k, n, dt: (Spy(real(k, n, dt)[0], n), real(k, n, dt)[1]))
    gen = torch.Generator().manual_seed(5)
    q, d = leaf(torch.randn(40, 16, generator=gen)), leaf(torch.randn(83, 16, generator=gen))
    K.info_nce(q, d, torch.arange(40), backend="triton", mode="fused", chunk_mib=0.004).backward()
    assert seen and all(km in (16, 32, 64) and kn == 128 for _, km, kn in seen), seen


# ----------------------------------------------------------------------------- knobs as arguments


def test_knobs_are_arguments_with_environment_override(monkeypatch: pytest.MonkeyPatch) -> None:
    T = triton_module()
    for var in ("E5X_INFONCE_MODE", "E5X_INFONCE_CHUNK_MIB", "E5X_AUTOTUNE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(S, "_default", S.KernelSettings())
    lean = []
    monkeypatch.setattr(T, "_column_pass", lambda *a, _orig=T._column_pass: (lean.append(1), _orig(*a))[1])
    gen = torch.Generator().manual_seed(6)
    q, d = torch.randn(6, 16, generator=gen), torch.randn(12, 16, generator=gen)
    ref = K.info_nce(q.double(), d.double(), backend="torch")

    def run(**kw):  # type: ignore[no-untyped-def]
        qq = leaf(q)
        loss = K.info_nce(qq, d.requires_grad_(True), backend="triton", **kw)
        loss.backward()
        assert rel(loss.detach(), ref) <= 1e-5
        return loss

    run(mode="lean", chunk_mib=0.001)
    assert lean == [1]
    K.configure(mode="lean")
    run()
    assert lean == [1, 1] and K.runtime_info()["mode"] == "lean"
    run(mode="fused")  # the argument wins over the process setting
    assert lean == [1, 1]
    monkeypatch.setenv("E5X_INFONCE_MODE", "fused")  # the environment overrides configure()
    run()
    assert lean == [1, 1]
    info = K.runtime_info()
    assert info["mode"] == "fused" and info["sources"]["mode"] == "environment"
    with pytest.raises(ValueError, match="mode must be one of"):
        K.info_nce(q, d, backend="triton", mode="fast")
    with pytest.raises(ValueError, match="chunk_mib"):
        K.configure(chunk_mib=0)
    with pytest.raises(TypeError, match="unknown kernel settings"):
        K.configure(chunk=1)


# ----------------------------------------------------------------------------- 2. launch count


def test_launch_count_of_the_small_batch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every launch of a fused info_nce forward + backward, counted on CPU: Triton kernels
    (interpreter calls) and torch ops outside them (allocation-free views not counted). The
    log-sum-exp merge and the row loss are one kernel each, not chains of torch ops; the
    total stays at the count measured when this test was written (a regression guard)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    T = triton_module()
    monkeypatch.setenv("E5X_KERNEL_CHECKS", "async")
    log: list[str] = []
    inside = [0]
    cls = type(T._lse_fwd)
    real_run = cls.run

    def run(self, *a, **kw):  # type: ignore[no-untyped-def]
        log.append("triton:" + self.fn.__name__ if hasattr(self, "fn") else "triton")
        inside[0] += 1
        try:
            return real_run(self, *a, **kw)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(cls, "run", run)
    free = (
        "empty",
        "view",
        "slice",
        "unsqueeze",
        "squeeze",
        "detach",
        "transpose",
        "select",
        "expand",
        "alias",
        "_unsafe_view",
        "as_strided",
        "permute",
        "t.default",
    )

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            name = str(func).removeprefix("aten.")
            if not inside[0] and not name.startswith(free):
                log.append(name)
            return func(*args, **(kwargs or {}))

    gen = torch.Generator().manual_seed(7)
    q, d = leaf(torch.randn(8, 32, generator=gen)), leaf(torch.randn(16, 32, generator=gen))
    with Count():
        loss = K.info_nce(q, d, torch.arange(8) * 2, backend="triton", mode="fused")
        loss.backward()
    kernels = [x for x in log if x.startswith("triton")]
    assert len(kernels) == 8, kernels  # pool x2, lse, merge, dscores, pool_bwd x2, row loss
    assert not [x for x in log if x.split(".")[0] in ("log2", "exp2", "max", "sum", "div", "index")], log
    assert len(log) <= 36, (len(log), log)
