"""Benchmark: pooled InfoNCE forward+backward, torch baselines vs e5x, in one process.

GPU (default sizes): Bq in {2048, 8192, 32768}, Bd = 2 Bq, H = 4096, bf16 hidden states
[B, L, H] (L = --seq-len, default 1: the op's cost is the Bq x Bd x H contraction, not the
gather), mean InfoNCE at tau = 0.02 with 1 hard negative per query. Methods:

  eager-fp32      torch, inputs upcast to fp32 (TF32 off, torch's default)
  eager-autocast  torch under torch.autocast(bfloat16)
  compile         torch.compile of the same function under autocast
  e5x             e5x.kernels.pooled_info_nce (Triton on CUDA)

Per method and size: median forward+backward time (CUDA events), peak memory above what was
allocated before the call (includes the gradients it returns) and the absolute peak,
TFLOP/s counting 3 GEMMs (S = Q D^T, dQ, dD: 6 Bq Bd H flops) and its share of the measured
bf16 matmul ceiling, and the loss' relative difference to eager-fp32.

CPU: small shapes only, a smoke test; e5x runs its torch reference there (backend "auto"),
the table says so.

    e5x bench kernels [--sizes 2048,8192] [--json out.json] [--methods e5x,compile]
    e5x bench kernels --device cpu --sizes 16 --hidden 64 --budget 0.1   # a few seconds on a CPU

(``python benches/bench_kernels.py`` in a checkout runs the same code.)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import torch
import torch.nn.functional as F

TAU = 0.02
ALL_METHODS = ("eager-fp32", "eager-autocast", "compile", "e5x")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except Exception:
        out["triton"] = "not installed"
    try:
        import e5x

        out["e5x"] = e5x.__version__
    except Exception:
        out["e5x"] = "?"
    out["cuda"] = str(torch.version.cuda)
    return out


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        return f"{p.name} ({p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB)"
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def torch_loss(qh, dh, q_last, d_last, pos, fp32: bool):
    """The textbook implementation: gather, normalise, full score matrix, cross-entropy."""
    q = qh[torch.arange(qh.shape[0], device=qh.device), q_last]
    d = dh[torch.arange(dh.shape[0], device=dh.device), d_last]
    if fp32:
        q, d = q.float(), d.float()
    q = F.normalize(q, dim=-1)
    d = F.normalize(d, dim=-1)
    logits = q @ d.T / TAU
    return F.cross_entropy(logits.float(), pos)


def make_inputs(bq: int, h: int, seq: int, dev: torch.device, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator(device=dev).manual_seed(seed)
    bd = 2 * bq
    qh = torch.randn(bq, seq, h, device=dev, dtype=dtype, generator=g)
    dh = torch.randn(bd, seq, h, device=dev, dtype=dtype, generator=g)
    # positives correlated with their queries (a realistic, non-uniform softmax)
    q_last = torch.full((bq,), seq - 1, device=dev, dtype=torch.long)
    d_last = torch.full((bd,), seq - 1, device=dev, dtype=torch.long)
    dh[0::2, seq - 1] += 0.3 * qh[:, seq - 1]
    pos = torch.arange(bq, device=dev) * 2
    return qh, dh, q_last, d_last, pos


def build_method(name: str, dev: torch.device) -> tuple[Callable[..., torch.Tensor], str]:
    cuda = dev.type == "cuda"
    amp = dict(device_type=dev.type, dtype=torch.bfloat16)
    if name == "eager-fp32":
        return (lambda qh, dh, ql, dl, pos: torch_loss(qh, dh, ql, dl, pos, fp32=True)), "torch"
    if name == "eager-autocast":

        def f(qh, dh, ql, dl, pos):
            with torch.autocast(**amp):
                return torch_loss(qh, dh, ql, dl, pos, fp32=False)

        return f, "torch"
    if name == "compile":
        compiled = torch.compile(lambda qh, dh, ql, dl, pos: torch_loss(qh, dh, ql, dl, pos, fp32=False))

        def g(qh, dh, ql, dl, pos):
            with torch.autocast(**amp):
                return compiled(qh, dh, ql, dl, pos)

        return g, "inductor"
    if name == "e5x":
        from e5x.kernels import pooled_info_nce
        from e5x.kernels._checks import pick_backend

        backend = pick_backend("auto", torch.empty(0, device=dev))
        label = "triton" if backend == "triton" else "torch reference" + ("" if cuda else " (CPU)")

        def e(qh, dh, ql, dl, pos):
            return pooled_info_nce(qh, dh, q_last_index=ql, d_last_index=dl, positive_index=pos, temperature=TAU)

        return e, label
    if name.startswith("e5x[") and name.endswith("]"):  # e5x with environment knobs set
        import os
        from unittest.mock import patch

        base, base_label = build_method("e5x", dev)
        env = dict(kv.split("=", 1) for kv in name[4:-1].split(",") if kv)

        def v(qh, dh, ql, dl, pos):
            # the knobs are read in the forward (fused and lean modes form the gradients
            # there; backward mode reads only the chunk budget in backward)
            with patch.dict(os.environ, env):
                return base(qh, dh, ql, dl, pos)

        return v, base_label + " " + ",".join(f"{k.replace('E5X_INFONCE_', '').lower()}={x}" for k, x in env.items())
    raise ValueError(name)


def time_fwd_bwd(fn, inputs, dev: torch.device, budget_s: float, max_reps: int) -> tuple[list[float], float]:
    qh, dh, ql, dl, pos = inputs

    def step() -> torch.Tensor:
        qh.grad = None
        dh.grad = None
        loss = fn(qh, dh, ql, dl, pos)
        loss.backward()
        return loss.detach()

    loss = step()  # warm-up: compile, autotune, allocator
    loss = step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        step()
        e1.record()
        torch.cuda.synchronize()
        est = e0.elapsed_time(e1) / 1e3
    else:
        t0 = time.perf_counter()
        step()
        est = time.perf_counter() - t0
    reps = int(max(3, min(max_reps, budget_s / max(est, 1e-6))))
    times = []
    for _ in range(reps):
        if dev.type == "cuda":
            e0.record()
            step()
            e1.record()
            torch.cuda.synchronize()
            times.append(e0.elapsed_time(e1))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    return times, float(loss)


def peak_memory(fn, inputs, dev: torch.device) -> tuple[float | None, float | None]:
    if dev.type != "cuda":
        return None, None
    qh, dh, ql, dl, pos = inputs
    qh.grad = None
    dh.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    fn(qh, dh, ql, dl, pos).backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(dev)
    qh.grad = None
    dh.grad = None
    return (peak - base) / 2**30, peak / 2**30


def matmul_ceiling(dev: torch.device, dtype: torch.dtype) -> float:
    """Measured TFLOP/s of a large square matmul (the practical ceiling for this device)."""
    n = 8192 if dev.type == "cuda" else 512
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10 if dev.type == "cuda" else 3):
        if dev.type == "cuda":
            torch.cuda.synchronize()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            a @ b
            e1.record()
            torch.cuda.synchronize()
            times.append(e0.elapsed_time(e1) / 1e3)
        else:
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e12


def autotune_choices() -> dict[str, str]:
    """Tile configs the Triton autotuner picked for the e5x kernels, per tuning key."""
    mod = sys.modules.get("e5x.kernels.triton_pooled_info_nce")
    out: dict[str, str] = {}
    for (name, dkey), tuner in getattr(mod, "_TUNED", {}).items():
        for key, cfg in getattr(tuner, "cache", {}).items():
            out[f"{name}/{dkey}/{key}"] = str(cfg)
    return out


def write_json(path: str, header: dict, rows: list[dict]) -> None:
    with open(path, "w") as f:
        json.dump(dict(header=header, rows=rows, e5x_autotune=autotune_choices()), f, indent=1, default=str)


def fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="e5x bench kernels", description="pooled InfoNCE fwd+bwd benchmark")
    ap.add_argument("--sizes", help="comma-separated Bq values (Bd = 2 Bq)")
    ap.add_argument("--hidden", type=int, help="H (default 4096 on GPU, 256 on CPU)")
    ap.add_argument("--seq-len", type=int, default=1, help="L of the hidden states (default 1)")
    ap.add_argument(
        "--methods", help=f"comma-separated subset of {ALL_METHODS} (default: all on GPU, all but compile on CPU)"
    )
    ap.add_argument(
        "--e5x-variant",
        action="append",
        default=[],
        metavar="K=V[,K=V]",
        help="extra e5x rows with these environment knobs, e.g. "
        "E5X_INFONCE_CHUNK_MIB=4096 or E5X_INFONCE_MODE=lean,E5X_INFONCE_CHUNK_MIB=256 (repeatable)",
    )
    ap.add_argument("--budget", type=float, default=1.5, help="seconds of timed repetitions per cell")
    ap.add_argument("--max-reps", type=int, default=50)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", help="also write the results as JSON here")
    args = ap.parse_args(argv)

    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([2048, 8192, 32768] if cuda else [64, 256])
    h = args.hidden or (4096 if cuda else 256)
    default = ALL_METHODS if cuda else tuple(m for m in ALL_METHODS if m != "compile")
    methods = [m for m in args.methods.split(",") if m] if args.methods else list(default)
    for m in methods:
        if m not in ALL_METHODS:
            ap.error(f"unknown method {m!r}; choose from {ALL_METHODS}")
    # e5x first within each size: if a time limit cuts a run short, its rows exist
    variants = [f"e5x[{v}]" for v in args.e5x_variant]
    methods = [m for m in methods if m == "e5x"] + variants + [m for m in methods if m != "e5x"]
    dtype = torch.bfloat16

    header: dict[str, Any] = dict(
        device=device_name(dev),
        **versions(),
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        shape=f"Bd = 2 Bq, H = {h}, L = {args.seq_len}, {str(dtype).replace('torch.', '')} inputs, tau {TAU}",
    )
    ceiling = matmul_ceiling(dev, dtype)
    header["matmul_ceiling_tflops"] = round(ceiling, 1)
    print("# pooled InfoNCE forward+backward")
    for k, v in header.items():
        print(f"# {k}: {v}")

    rows = []
    funcs = {}
    for m in methods:
        try:
            funcs[m] = build_method(m, dev)
        except Exception as exc:  # e.g. torch.compile unavailable
            print(f"# {m}: unavailable ({exc})")
    for bq in sizes:
        inputs = make_inputs(bq, h, args.seq_len, dev, dtype)
        qh, dh = inputs[0].requires_grad_(True), inputs[1].requires_grad_(True)
        inputs = (qh, dh, *inputs[2:])
        flops = 6.0 * bq * (2 * bq) * h
        ref_loss = None
        for m, (fn, label) in funcs.items():
            row: dict[str, Any] = dict(bq=bq, bd=2 * bq, h=h, method=m, impl=label)
            try:
                times, loss = time_fwd_bwd(fn, inputs, dev, args.budget, args.max_reps)
                extra, absolute = peak_memory(fn, inputs, dev)
                med = statistics.median(times)
                row.update(
                    ms=med,
                    ms_min=min(times),
                    reps=len(times),
                    peak_extra_gib=extra,
                    peak_abs_gib=absolute,
                    tflops=flops / (med / 1e3) / 1e12,
                    loss=loss,
                )
                row["ceiling_pct"] = 100 * row["tflops"] / ceiling
                if m == "eager-fp32":
                    ref_loss = loss
            except torch.cuda.OutOfMemoryError as exc:
                row.update(error=f"OOM: {str(exc).splitlines()[0][:120]}")
            except Exception as exc:
                row.update(error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            finally:
                qh.grad = None
                dh.grad = None
                if cuda:
                    torch.cuda.empty_cache()
            rows.append(row)
        for row in rows:
            if row["bq"] == bq and ref_loss is not None and "loss" in row:
                row["loss_rel_diff"] = abs(row["loss"] - ref_loss) / max(abs(ref_loss), 1e-12)
        del inputs, qh, dh
        for r in rows:
            if r["bq"] == bq:
                print(
                    "row",
                    json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}),
                    flush=True,
                )
        if args.json:  # after every size, so a run cut short still leaves its rows
            write_json(args.json, header, rows)

    print()
    print(
        f"| {'Bq':>6} | {'method':<15} | {'impl':<30} | {'ms (median)':>11} | {'TFLOP/s':>7} | "
        f"{'% ceil':>6} | {'peak+ GiB':>9} | {'peak GiB':>8} | {'loss':>9} | {'Δ vs fp32':>9} |"
    )
    print("|" + "|".join("-" * w for w in (8, 17, 32, 13, 9, 8, 11, 10, 11, 11)) + "|")
    for r in rows:
        if "error" in r:
            print(
                f"| {r['bq']:>6} | {(r['method'] if not r['method'].startswith('e5x[') else 'e5x (knobs)'):<15} | {r['impl']:<30} | {r['error']}"
            )
            continue
        print(
            f"| {r['bq']:>6} | {(r['method'] if not r['method'].startswith('e5x[') else 'e5x (knobs)'):<15} | {r['impl']:<30} | {r['ms']:>11.3f} | {r['tflops']:>7.2f} | "
            f"{r['ceiling_pct']:>6.1f} | {fmt(r['peak_extra_gib'], '.3f'):>9} | {fmt(r['peak_abs_gib'], '.3f'):>8} | "
            f"{r['loss']:>9.5f} | {fmt(r.get('loss_rel_diff'), '.1e'):>9} |"
        )
    print()
    print("TFLOP/s counts 6*Bq*Bd*H (forward scores + two gradient GEMMs) for every method;")
    print("peak+ = peak allocated minus allocated before the call (includes the returned gradients).")
    if not cuda:
        print("CPU smoke test: e5x ran its torch reference (Triton needs CUDA or the interpreter).")
    if args.json:
        write_json(args.json, header, rows)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
