"""Compile every Triton kernel of e5x.kernels for an NVIDIA target without a GPU.

Triton's front end, its MLIR passes and the bundled ptxas run on any machine, so this
catches what the interpreter cannot (globals read from a kernel, type errors of the
compiled language, shared-memory overflow of a tile config) before a GPU is lent.

    python kernels/compile_check.py [--arch 90] [--all-configs] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)  # must be unset before the kernels are decorated


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (H100/H200), 80 (A100)")
    ap.add_argument("--all-configs", action="store_true", help="every tile config, not just the first per dtype")
    ap.add_argument("--json", help="write per-kernel results (shared memory, registers) here")
    args = ap.parse_args(argv)

    import torch
    import triton
    from e5x.kernels import triton_pooled_info_nce as T
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if T.INTERPRET:
        raise SystemExit("TRITON_INTERPRET=1 was set before e5x.kernels was imported; unset it")
    target = GPUTarget("cuda", args.arch, 32)
    results = []

    def compile_one(fn, sig: dict, consts: dict, num_warps: int = 4, num_stages: int = 3) -> None:
        sig = dict(sig)
        for k in consts:
            sig[k] = "constexpr"
        # What the JIT infers at launch for typical arguments: pointers 16-byte aligned and
        # sizes/strides divisible by 16 (H = 4096). Without it loads are not vectorised and
        # the software pipeliner stays off, so shared memory would be understated.
        names = list(sig)
        attrs = {
            (names.index(n),): [["tt.divisibility", 16]]
            for n, t in sig.items()
            if t != "constexpr" and n not in ("scale2", "inv_t", "row0", "n_rows", "SPLIT", "Bq", "Bd")
        }
        t0 = time.time()
        k = triton.compile(
            ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
            target=target,
            options=dict(num_warps=num_warps, num_stages=num_stages),
        )
        md = k.metadata
        row = dict(
            kernel=fn.__name__,
            consts={c: v for c, v in consts.items()},
            num_warps=num_warps,
            num_stages=num_stages,
            shared=getattr(md, "shared", None),
            n_regs=getattr(k, "n_regs", None),
            n_spills=getattr(k, "n_spills", None),
            seconds=round(time.time() - t0, 2),
        )
        results.append(row)
        print(f"{fn.__name__:16s} ok  shared={row['shared']}  {row['consts']}  warps={num_warps} stages={num_stages}")

    for dt, key in (("bf16", "16bit"), ("fp16", "16bit"), ("fp32", "fp32")):
        prec = "tf32x3" if dt == "fp32" else "tf32"  # what _precision() picks on a GPU
        configs = T._GPU_CONFIGS[key] if args.all_configs else T._GPU_CONFIGS[key][:1]
        for cfg in configs:
            tiles = {k: v for k, v in cfg.items() if k.startswith("BLOCK")}
            consts = dict(tiles, PRECISION=prec, UPCAST=False)
            # The false-negative mask adds int64 loads and compares to the GEMM kernels'
            # epilogues; fp16 compiles like bf16, so one 16-bit type carries the masked variants.
            for fused in (False, True):
                for mask in (False, True) if dt != "fp16" else (False,):
                    compile_one(
                        T._lse_fwd,
                        {
                            "Q": f"*{dt}",
                            "D": f"*{dt}",
                            "RQ": "*fp32",
                            "RD": "*fp32",
                            "M_OUT": "*fp32",
                            "L_OUT": "*fp32",
                            "S_OUT": "*fp32",
                            "POS": "*i64",
                            "QG": "*i64",
                            "DG": "*i64",
                            "Bq": "i32",
                            "Bd": "i32",
                            "H": "i32",
                            "SPLIT": "i32",
                            "stride_s": "i32",
                            "scale2": "fp32",
                            "KEY_M": "i32",
                            "KEY_N": "i32",
                        },
                        dict(consts, STORE_S=fused, MASK_FN=mask),
                        cfg["num_warps"],
                        cfg["num_stages"],
                    )
                    compile_one(
                        T._dscores,
                        {
                            "Q": f"*{dt}",
                            "D": f"*{dt}",
                            "RQ": "*fp32",
                            "RD": "*fp32",
                            "LSE2": "*fp32",
                            "POS": "*i64",
                            "COEF": "*fp32",
                            "DS": f"*{dt}",
                            "S_IN": "*fp32",
                            "QG": "*i64",
                            "DG": "*i64",
                            "row0": "i32",
                            "n_rows": "i32",
                            "col0": "i32",
                            "n_cols": "i32",
                            "Bq": "i32",
                            "Bd": "i32",
                            "H": "i32",
                            "stride_ds": "i32",
                            "stride_s": "i32",
                            "scale2": "fp32",
                            "KEY_M": "i32",
                            "KEY_N": "i32",
                        },
                        dict(consts, FROM_S=fused, MASK_FN=mask),
                        cfg["num_warps"],
                        cfg["num_stages"],
                    )
        for normalize in (True, False):
            compile_one(
                T._pool_norm_fwd,
                {
                    "X": f"*{dt}",
                    "IDX": "*i64",
                    "RAW": f"*{dt}",
                    "E": f"*{dt}",
                    "RSTD": "*fp32",
                    "stride_xb": "i64",
                    "stride_xl": "i64",
                    "H": "i32",
                },
                dict(NORMALIZE=normalize, WRITE_RAW=True, WRITE_E=True, EPS=T.NORM_EPS, BLOCK_H=1024),
                8,
                1,
            )
            compile_one(
                T._pool_norm_bwd,
                {
                    "X": f"*{dt}",
                    "IDX": "*i64",
                    "RSTD": "*fp32",
                    "R": "*fp32",
                    "DX": f"*{dt}",
                    "row0": "i32",
                    "stride_xb": "i64",
                    "stride_xl": "i64",
                    "stride_gb": "i64",
                    "stride_gl": "i64",
                    "stride_r": "i64",
                    "H": "i32",
                },
                dict(NORMALIZE=normalize, BLOCK_H=1024),
                8,
                1,
            )
        compile_one(
            T._rowdot,
            {
                "Q": f"*{dt}",
                "D": f"*{dt}",
                "POS": "*i64",
                "RQ": "*fp32",
                "RD": "*fp32",
                "LSE2": "*fp32",
                "OUT": "*fp32",
                "H": "i32",
                "inv_t": "fp32",
            },
            dict(BLOCK_H=1024),
            8,
            1,
        )
    compile_one(
        T._lse_merge, {"M": "*fp32", "L": "*fp32", "OUT": "*fp32", "Bq": "i32", "SPLIT": "i32"}, dict(BLOCK=256), 2, 1
    )
    # The GPU launch path wraps the GEMM kernels in triton.autotune; building the wrappers
    # checks their tuning keys name real kernel arguments (Triton raises otherwise).
    for name, fn in (("lse", T._lse_fwd), ("dscores", T._dscores)):
        for dtype in (torch.bfloat16, torch.float32):
            tuner, meta = T._launcher(fn, name, dtype)
            assert meta is None and len(tuner.configs) >= 1, (name, dtype)
    print("autotune wrappers ok")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(arch=args.arch, triton=triton.__version__, kernels=results), f, indent=1)
    print(f"{len(results)} kernel variants compiled for sm_{args.arch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
