"""Benchmark of the Rust data core: parse+validate+dedup, and placeholder sampling+render.

The code ships in the package (e5x.bench.clean) so that `e5x bench clean` runs from an
installed wheel; this file keeps `python benches/bench_clean.py [ARGS...]` working.
"""

import sys

from e5x.bench.clean import main

if __name__ == "__main__":
    sys.exit(main())
