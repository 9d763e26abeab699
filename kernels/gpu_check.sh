#!/usr/bin/env bash
# One-shot GPU check-and-bench of e5x.kernels for a lent H100/H200 (at most ~9.5 minutes).
# Builds nothing. Needs python with torch + triton; e5x comes from the installed wheel or,
# failing that, from python/ of this checkout (the kernels need no Rust extension).
#
#   OUT=/some/dir bash kernels/gpu_check.sh        # from the repository root
#   run(command="bash kernels/gpu_check.sh", timeout_s=600)   # device tool: $OUT is set
#
# Writes to $OUT: env.txt, selfcheck.{txt,json}, pytest.{txt,xml}, bench_kernels.{txt,json},
# summary.json. Each step has its own time limit so that a hang in one still leaves the others'
# results. pytest is optional on the GPU machine: when it is missing and wheels of it sit in
# $E5X_WHEELS (default .gpu-wheels/, e.g. `pip download pytest -d .gpu-wheels` here and carry
# it), they are installed to a temporary directory; otherwise that step is skipped and the
# standalone self-check still covers correctness.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
T_SELF=${E5X_T_SELFCHECK:-130}
T_TEST=${E5X_T_PYTEST:-110}
T_BENCH=${E5X_T_BENCH:-320}
# Besides the four methods: e5x with a 4 GiB chunk budget, in recompute-in-backward mode, and
# in lean mode (no fp32 document accumulator) with 256 MiB and 1 GiB chunk budgets.
BENCH_ARGS=${E5X_BENCH_ARGS:---e5x-variant E5X_INFONCE_CHUNK_MIB=4096 --e5x-variant E5X_INFONCE_MODE=backward \
--e5x-variant E5X_INFONCE_MODE=lean,E5X_INFONCE_CHUNK_MIB=256 --e5x-variant E5X_INFONCE_MODE=lean}

log() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)" | tee -a "$OUT/progress.txt"; }

# e5x: the installed one if it imports, else the source tree (kernels are pure Python + Triton).
if ! "$PY" -c "import e5x.kernels" 2>/dev/null; then
    export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
fi
unset TRITON_INTERPRET

log "environment"
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
    "$PY" - <<'PY' 2>&1
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton; print("triton", triton.__version__)
except Exception as e:
    print("triton import failed:", e)
import e5x, e5x.kernels
print("e5x", e5x.__version__, "from", e5x.__file__)
print("cuda available", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
PY
} | tee "$OUT/env.txt"

log "standalone self-check (compiled kernels vs float64, H=4096, autotune on)"
timeout -k 10 "$T_SELF" "$PY" kernels/gpu_selfcheck.py --json "$OUT/selfcheck.json" 2>&1 | tee "$OUT/selfcheck.txt"
RC_SELF=${PIPESTATUS[0]}

log "pytest tests/test_kernels.py with E5X_TEST_GPU=1"
RC_TEST=skipped
if ! "$PY" -c "import pytest" 2>/dev/null; then
    WHEELS=${E5X_WHEELS:-$ROOT/.gpu-wheels}
    if ls "$WHEELS"/pytest-*.whl >/dev/null 2>&1; then
        "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" --target /tmp/e5x-pylib pytest \
            2>&1 | tail -3 | tee -a "$OUT/pytest.txt"
        export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/tmp/e5x-pylib"
    fi
fi
if "$PY" -c "import pytest" 2>/dev/null; then
    # E5X_AUTOTUNE=0: the tests check numerics with the default tile config and skip the
    # autotuner's compile of every config for every tiny shape (the self-check and the
    # benchmark run with autotuning on).
    E5X_TEST_GPU=1 E5X_AUTOTUNE=0 timeout -k 10 "$T_TEST" "$PY" -m pytest "$ROOT/tests/test_kernels.py" \
        -q -p no:cacheprovider -rfEs --junitxml "$OUT/pytest.xml" 2>&1 | tail -60 | tee -a "$OUT/pytest.txt"
    RC_TEST=${PIPESTATUS[0]}
else
    echo "pytest not available on this machine and no wheels in ${E5X_WHEELS:-.gpu-wheels}: skipped" | tee -a "$OUT/pytest.txt"
fi

log "benchmark"
# shellcheck disable=SC2086
timeout -k 10 "$T_BENCH" "$PY" benches/bench_kernels.py --json "$OUT/bench_kernels.json" $BENCH_ARGS 2>&1 \
    | tee "$OUT/bench_kernels.txt"
RC_BENCH=${PIPESTATUS[0]}

log "summary"
"$PY" - "$OUT" "$RC_SELF" "$RC_TEST" "$RC_BENCH" <<'PY' | tee "$OUT/summary.txt"
import json, os, sys
out, rc_self, rc_test, rc_bench = sys.argv[1:]
summary = {"rc": {"selfcheck": rc_self, "pytest": rc_test, "bench": rc_bench}}
try:
    summary["selfcheck_ok"] = json.load(open(os.path.join(out, "selfcheck.json")))["ok"]
except Exception as e:
    summary["selfcheck_ok"] = f"no result ({e})"
goals = {}
try:
    bench = json.load(open(os.path.join(out, "bench_kernels.json")))
    summary["device"] = bench["header"]["device"]
    rows = {(r["bq"], r["method"]): r for r in bench["rows"]}
    # the default e5x row and every knob variant (e.g. lean mode), each against the goals
    for name in sorted({m for _, m in rows if m.startswith("e5x")}):
        g = goals.setdefault(name, {})
        e = rows.get((2048, name), {})
        g["bq2048_ms<=0.60"] = [e.get("ms"), e.get("ms") is not None and e["ms"] <= 0.60]
        e, c = rows.get((32768, name), {}), rows.get((32768, "compile"), {})
        if e.get("ms") and c.get("ms"):
            g["bq32768_time<=1.2x_compile"] = [round(e["ms"] / c["ms"], 3), e["ms"] <= 1.2 * c["ms"]]
        if e.get("peak_extra_gib") is not None:
            g["bq32768_peak_extra<=2GiB"] = [e["peak_extra_gib"], e["peak_extra_gib"] <= 2.0]
            g["bq32768_peak_abs<=2GiB"] = [e["peak_abs_gib"], e["peak_abs_gib"] <= 2.0]
    summary["e5x_autotune"] = bench.get("e5x_autotune")
except Exception as e:
    goals["bench"] = f"no result ({e})"
summary["goals"] = goals
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1, default=str)
print(json.dumps(summary, indent=1, default=str))
PY
echo "results in $OUT"
