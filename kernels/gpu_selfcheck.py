"""Standalone GPU correctness check of e5x.kernels (no pytest needed).

Compiled Triton kernels against the float64 torch reference at the recipe's hidden size
(H = 4096), bf16 and fp32, left/right padding, hard negatives and extra documents, with
the tile autotuner on (as training runs it). Prints one line per case and rewrites the
JSON after every case (a run cut short by a time limit still leaves its results). The JSON
also records what the run used: the GEMM path of the fp32-output matmuls, the packed
attention backend ``auto`` resolves to, the autotuner's winner per kernel and key, and
registers / spills of every compiled kernel.

    python kernels/gpu_selfcheck.py [--json out.json]
    TRITON_INTERPRET=1 python kernels/gpu_selfcheck.py --dry-run   # CPU, tiny sizes

Exit status 1 when a case misses its goal (bf16: loss rel. error <= 1e-3, gradients <= 1e-2;
fp32: 1e-5 / 1e-4) or a non-pooled position gets a gradient.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from unittest.mock import patch

import torch

DEVICE = torch.device("cuda")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def rel(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-30) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(floor))


def case(
    bq: int, k: int, extra: int, h: int, seq: int, dtype: torch.dtype, seed: int, env: dict[str, str] | None = None
) -> dict:
    import e5x.kernels as K

    with patch.dict(os.environ, env or {}):
        return _case(K, bq, k, extra, h, seq, dtype, seed) | ({"env": env} if env else {})


def _case(K, bq: int, k: int, extra: int, h: int, seq: int, dtype: torch.dtype, seed: int) -> dict:  # noqa: N803

    dev = DEVICE
    g = torch.Generator(device="cpu").manual_seed(seed)
    bd = bq * (k + 1) + extra
    qh = torch.randn(bq, seq, h, generator=g)
    dh = torch.randn(bd, seq, h, generator=g)
    q_len = torch.randint(1, seq + 1, (bq,), generator=g)
    d_len = torch.randint(1, seq + 1, (bd,), generator=g)
    q_len[0], d_len[-1] = seq, 1
    pos_ar = torch.arange(seq)
    q_mask = (pos_ar[None, :] >= seq - q_len[:, None]).long()  # left padding
    d_mask = (pos_ar[None, :] < d_len[:, None]).long()  # right padding
    q_last = torch.full((bq,), seq - 1)
    d_last = d_len - 1
    for i in range(bq):
        dh[i * (k + 1), d_last[i * (k + 1)]] += 0.15 * qh[i, q_last[i]]
    kw = dict(q_mask=q_mask.to(dev), d_mask=d_mask.to(dev), group_size=k + 1)

    # the reference sees the very values the kernels see (inputs rounded to `dtype` first)
    qh, dh = qh.to(dtype), dh.to(dtype)

    def run(dt: torch.dtype, backend: str):
        q = qh.to(dev, dt).detach().clone().requires_grad_(True)
        d = dh.to(dev, dt).detach().clone().requires_grad_(True)
        loss = K.pooled_info_nce(q, d, **kw, backend=backend)
        loss.backward()
        sync()
        return loss.detach(), q.grad, d.grad

    run(dtype, "triton")  # warm-up: compile + autotune
    t0 = time.perf_counter()
    loss, gq, gd = run(dtype, "triton")
    ms = (time.perf_counter() - t0) * 1e3
    ref, rq, rd = run(torch.float64, "torch")
    loss_tol, grad_tol = (1e-3, 1e-2) if dtype != torch.float32 else (1e-5, 1e-4)
    stray = 0
    for grad, last in ((gq, q_last), (gd, d_last)):
        keep = torch.zeros(grad.shape[:2], dtype=torch.bool, device=dev)
        keep[torch.arange(grad.shape[0]), last.to(dev)] = True
        stray += int(torch.count_nonzero(grad[~keep]))
    out = dict(
        bq=bq,
        bd=bd,
        k=k,
        extra=extra,
        h=h,
        seq=seq,
        dtype=str(dtype).replace("torch.", ""),
        loss=float(loss),
        ref_loss=float(ref),
        loss_rel=rel(loss, ref, 1.0),
        gq_rel=rel(gq, rq),
        gd_rel=rel(gd, rd),
        stray_nonzero=stray,
        ms_one_call=round(ms, 3),
    )
    out["ok"] = out["loss_rel"] <= loss_tol and out["gq_rel"] <= grad_tol and out["gd_rel"] <= grad_tol and stray == 0
    return out


def environment() -> dict:
    """What this process ran with: GEMM path, attention backend, autotune winners, and the
    registers / spills of every kernel compiled so far. Each part is best-effort."""
    out: dict = {}
    try:
        from e5x.kernels import triton_pooled_info_nce as T

        mm = getattr(T, "_MM_OUT_DTYPE", None)
        out["gemm_path"] = {
            True: "torch.mm(out_dtype=float32)",
            False: "bf16-output mm + upcast (fallback)",
            None: "not used yet",
        }.get(mm, repr(mm))
        for name in ("GEMM_FALLBACK", "_FALLBACK_REASON"):
            if getattr(T, name, None):
                out["gemm_fallback_reason"] = str(getattr(T, name))
        winners = {}
        for (name, key), tuner in getattr(T, "_TUNED", {}).items():
            for tkey, cfg in getattr(tuner, "cache", {}).items():
                winners[f"{name}/{key}/{tkey}"] = str(cfg)
        out["autotune_winners"] = winners
        kernels = {}
        for kname in ("_pool_norm_fwd", "_pool_norm_bwd", "_rowdot", "_lse_merge", "_lse_fwd", "_dscores"):
            fn = getattr(T, kname, None)
            for dev, entry in getattr(fn, "device_caches", {}).items():
                for i, compiled in enumerate(entry[0].values()):
                    kernels[f"{kname}#{i}@{dev}"] = {
                        "n_regs": getattr(compiled, "n_regs", None),
                        "n_spills": getattr(compiled, "n_spills", None),
                        "num_warps": getattr(getattr(compiled, "metadata", None), "num_warps", None),
                    }
        out["compiled_kernels"] = kernels
        out["spilling_kernels"] = sorted(k for k, v in kernels.items() if v.get("n_spills"))
    except Exception as exc:  # noqa: BLE001 - a report, never a failure
        out["kernels_error"] = f"{type(exc).__name__}: {exc}"
    try:
        from e5x.model import attention

        out["attention_backend"] = attention.resolve_backend("auto", DEVICE)
    except Exception as exc:  # noqa: BLE001
        out["attention_backend"] = f"unresolved ({type(exc).__name__}: {exc})"
    return out


def write(path: str | None, payload: dict) -> None:
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=str)
    os.replace(tmp, path)


# (bq, k, extra, h, seq, dtype[, env]) at the recipe's hidden size
PLAN = [
    (1, 0, 3, 4096, 4, torch.bfloat16),
    (300, 1, 17, 4096, 5, torch.bfloat16),
    (1024, 3, 0, 4096, 2, torch.bfloat16),
    (129, 2, 5, 4096, 3, torch.float32),
    (77, 1, 0, 1000, 6, torch.bfloat16),  # H not a multiple of any block
    # lean mode in several row and column chunks (4 MiB budget: 3 x 128 rows, 5 x 128 documents)
    (300, 1, 17, 4096, 5, torch.bfloat16, {"E5X_INFONCE_MODE": "lean", "E5X_INFONCE_CHUNK_MIB": "4"}),
    (129, 2, 5, 4096, 3, torch.float32, {"E5X_INFONCE_MODE": "lean", "E5X_INFONCE_CHUNK_MIB": "4"}),
]
# --dry-run: the same code paths on CPU under TRITON_INTERPRET=1, tiny sizes (seconds)
DRY_PLAN = [
    (1, 0, 3, 64, 3, torch.bfloat16),
    (5, 1, 2, 40, 3, torch.float32),  # H not a multiple of the block
    (20, 1, 3, 32, 2, torch.bfloat16, {"E5X_INFONCE_MODE": "lean", "E5X_INFONCE_CHUNK_MIB": "0.0005"}),
]


def main(argv: list[str] | None = None) -> int:
    global DEVICE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU under TRITON_INTERPRET=1 at tiny sizes: proves the script runs, times nothing",
    )
    args = ap.parse_args(argv)
    if args.dry_run:
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("--dry-run needs TRITON_INTERPRET=1 in the environment (set before triton imports)")
            return 2
        DEVICE = torch.device("cpu")
    elif not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    import triton

    name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "CPU (TRITON_INTERPRET=1, dry run)"
    print(f"device {name}  torch {torch.__version__}  triton {triton.__version__}", flush=True)
    head = dict(device=name, torch=torch.__version__, triton=triton.__version__, dry_run=args.dry_run)
    results, ok = [], True
    for i, (bq, k, extra, h, seq, dt, *env) in enumerate(DRY_PLAN if args.dry_run else PLAN):
        try:
            r = case(bq, k, extra, h, seq, dt, seed=i, env=env[0] if env else None)
        except Exception as exc:  # keep going: the other cases and the benchmark still tell a lot
            r = dict(bq=bq, k=k, extra=extra, h=h, dtype=str(dt), ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
        ok &= bool(r["ok"])
        results.append(r)
        print(json.dumps(r), flush=True)
        write(args.json, dict(head, cases=results, ok=ok, complete=False))
    envinfo = environment()
    print("environment", json.dumps(envinfo, default=str), flush=True)
    write(args.json, dict(head, cases=results, ok=ok, complete=True, environment=envinfo))
    print("SELF-CHECK", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
