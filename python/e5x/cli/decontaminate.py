"""``e5x decontaminate TRIPLES --against EVAL... -o OUT``: drop training rows that appear in
evaluation sets (case and spacing ignored), and say which.

  e5x decontaminate data/synthetic.parquet --against scifact stsb -o data/synthetic.clean.parquet
  e5x decontaminate data/public/nq.parquet --against path/to/beir/nq --keep --report overlaps.parquet

EVAL is a BEIR folder (its split's queries and judged documents), an STS-B file or folder,
a registered evaluation set (scifact, stsb), or a .txt / .jsonl file of texts. The report
(``OUT`` with ``.overlaps.parquet``, or --report) lists each overlap: training row, column,
evaluation set, where in it, and the text. See ``e5x.cleaning.decontaminate``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1]
    parser.add_argument("triples", help="training triples (.parquet)")
    parser.add_argument("--against", nargs="+", required=True, metavar="EVAL", help="evaluation sets (see below)")
    parser.add_argument("-o", "--output", help="where to write the triples without overlapping rows (.parquet)")
    parser.add_argument("--report", help="where to write the overlaps (default: OUTPUT.overlaps.parquet)")
    parser.add_argument("--split", default="test", help="split of BEIR/STS evaluation sets (default: test)")
    parser.add_argument("--keep", action="store_true", help="only report: write the triples unchanged")


def run(args: argparse.Namespace) -> int:
    import polars as pl

    from e5x.cleaning.decontaminate import decontaminate
    from e5x.formats.triples import write_triples

    if not args.output and not args.report:
        print("e5x decontaminate: error: give -o OUTPUT and/or --report REPORT", file=sys.stderr)
        return 2
    src = Path(args.triples)
    try:
        triples = pl.read_parquet(src)
    except FileNotFoundError:
        print(f"e5x decontaminate: error: {src} not found", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - polars raises several types for a bad file
        print(f"e5x decontaminate: error: {src}: not a readable Parquet file ({' '.join(str(exc).split())})",
              file=sys.stderr)  # fmt: skip
        return 2
    from e5x.data.download import resolve

    # An unknown name (exit 2) or a failed fetch (exit 1) is the CLI's one-line error.
    against = [resolve(spec) for spec in args.against]
    out, overlaps = decontaminate(triples, against, split=args.split, drop=not args.keep)
    report = Path(args.report) if args.report else Path(args.output).with_suffix(".overlaps.parquet")
    report.parent.mkdir(parents=True, exist_ok=True)
    overlaps.write_parquet(report)
    if args.output:
        write_triples(out, args.output)
    rows = overlaps["row"].n_unique() if overlaps.height else 0
    counts = overlaps.group_by("eval_set").len().sort("eval_set").iter_rows()
    by_set = ", ".join(f"{s} {n}" for s, n in counts) or "none"
    action = "kept (--keep)" if args.keep else "dropped"
    print(f"{src}: {rows} of {triples.height} rows overlap evaluation texts ({by_set}); {action}; report {report}"
          + (f"; wrote {args.output} ({out.height} rows)" if args.output else ""))  # fmt: skip
    return 0
