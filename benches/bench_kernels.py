"""Benchmark: pooled InfoNCE forward+backward, torch baselines vs e5x, in one process.

The code ships in the package (e5x.bench.kernels) so that `e5x bench kernels` runs from an
installed wheel; this file keeps `python benches/bench_kernels.py [ARGS...]` working.
"""

import sys

from e5x.bench.kernels import main

if __name__ == "__main__":
    sys.exit(main())
