"""Benchmark of decontamination: training rows against the SciFact and STS-B test texts.

Generates N training triples (query, positive, negative; random words, ~60% of negatives
null) with a few planted overlaps (evaluation texts with case and spacing changed), then
finds the overlaps, in one process:

  e5x      e5x.cleaning.decontaminate.find_overlaps: the Rust deduplicator (NFKC, whitespace,
           case folding, xxh3-128; all cores)
  python   the same normalisation in Python (unicodedata NFKC, str.casefold, split/join)
           and a set of the evaluation texts

Both must find exactly the planted overlaps. Prints seconds, rows/s and the ratio.

    python benches/bench_decontaminate.py                  # 1M rows
    python benches/bench_decontaminate.py --rows 100000
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import platform
import random
import time
import unicodedata
from pathlib import Path

import polars as pl

from e5x.cleaning.decontaminate import EvalTexts, eval_texts, find_overlaps

WORDS = ("the of and to in is that for it as with was on be by this are or from at which an have protein cell "
         "gene expression patients study results café naïve Straße 日本語 データ москва данные").split()  # fmt: skip


def header() -> str:
    def ver(p: str) -> str:
        try:
            return md.version(p)
        except md.PackageNotFoundError:
            return "-"

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return (f"# machine: {platform.node()} | {cpu} | {os.cpu_count()} logical cores | {platform.system()}\n"
            f"# python {platform.python_version()} | e5x {ver('e5x')} | polars {ver('polars')}\n"
            f"# load average at start {' '.join(f'{x:.1f}' for x in os.getloadavg())}")  # fmt: skip


def make_triples(rows: int, evals: list[EvalTexts], planted: int, seed: int) -> tuple[pl.DataFrame, set]:
    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choices(WORDS, k=n))

    cols = {"query": [text(8) for _ in range(rows)], "positive": [text(60) for _ in range(rows)],
            "negative": [text(60) if rng.random() < 0.4 else None for _ in range(rows)]}  # fmt: skip
    want = set()
    for _ in range(planted):
        e = rng.choice(evals)
        t = rng.choice(e.texts)
        row, col = rng.randrange(rows), rng.choice(list(cols))
        cols[col][row] = "  " + t.upper().replace(" ", "   ") + " "
        want.add((row, col))
    return pl.DataFrame(cols, schema={c: pl.String for c in cols}), want


def _norm(s: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", s).casefold().split())


def python_overlaps(triples: pl.DataFrame, evals: list[EvalTexts]) -> set:
    seen = {_norm(t) for e in evals for t in e.texts}
    found = set()
    for col in ("query", "positive", "negative"):
        for row, t in enumerate(triples[col].to_list()):
            if t is not None and _norm(t) in seen:
                found.add((row, col))
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--planted", type=int, default=100)
    ap.add_argument(
        "--data",
        default=os.environ.get("E5X_DATA_MIRROR", str(Path(__file__).parents[2] / "shared/data")),
        help="folder with scifact/ and sts/stsbenchmark/ (default: $E5X_DATA_MIRROR, ../shared/data)",
    )
    args = ap.parse_args()
    data = Path(args.data)
    evals = [eval_texts(data / "scifact"), eval_texts(data / "sts" / "stsbenchmark")]
    triples, want = make_triples(args.rows, evals, args.planted, seed=0)
    n_eval = sum(len(e.texts) for e in evals)
    print(header())
    print(f"# {args.rows:,} training rows (3 text columns, {triples['negative'].null_count():,} null negatives) "
          f"against {n_eval:,} test texts (SciFact queries + judged abstracts, STS-B sentences); "
          f"{len(want)} planted overlaps")  # fmt: skip
    t = time.perf_counter()
    got = find_overlaps(triples, evals)
    t_e5x = time.perf_counter() - t
    found_e5x = set(zip(got["row"].to_list(), got["column"].to_list()))
    t = time.perf_counter()
    found_py = python_overlaps(triples, evals)
    t_py = time.perf_counter() - t
    assert found_e5x == want == found_py, (len(found_e5x), len(want), len(found_py))
    print(f"{'method':<8}{'seconds':>10}{'rows/s':>14}{'overlaps':>10}{'vs python':>11}")
    for name, secs in (("python", t_py), ("e5x", t_e5x)):
        print(f"{name:<8}{secs:>10.2f}{args.rows / secs:>14,.0f}{len(want):>10}{t_py / secs:>10.1f}x")


if __name__ == "__main__":
    main()
