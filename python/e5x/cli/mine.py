"""``e5x mine MODEL TRIPLES -o OUT``: hard negatives for training triples that have none.

MODEL is a sentence-transformers model (a path, e.g. a model saved by ``e5x train``, or a
name in the local Hugging Face cache); TRIPLES a Parquet file of training triples (the
columns ``e5x clean`` writes; ``query`` and ``positive`` are required). Candidates are the
file's positives plus an optional ``--corpus`` (.txt, .jsonl or .parquet, as ``e5x encode``
reads them). See ``e5x.data.negatives.mine_hard_negatives``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="sentence-transformers model path or name")
    parser.add_argument("triples", help="training triples (.parquet)")
    parser.add_argument("-o", "--output", required=True, help="where to write the triples with negatives (.parquet)")
    parser.add_argument("--corpus", help="extra candidate documents (.txt, .jsonl or .parquet)")
    parser.add_argument("--field", default="text", help="text field of a .jsonl/.parquet corpus (default: text)")
    parser.add_argument("--range-min", type=int, default=10, help="skip the closest candidates (default 10)")
    parser.add_argument("--range-max", type=int, default=50, help="search this many candidates (default 50)")
    parser.add_argument(
        "--relative-margin",
        type=float,
        default=0.05,
        help="drop candidates scoring above (1 - margin) x the positive's score (default 0.05; negative: off)",
    )
    parser.add_argument("--sampling", choices=["random", "top"], default="random")
    parser.add_argument(
        "--query-prompt", default="", help="text before each query when embedding (E5 models: 'query: '; default none)"
    )
    parser.add_argument(
        "--passage-prompt",
        default="",
        help="text before each candidate when embedding (E5 models: 'passage: '; default none)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace negatives that rows already have")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    from e5x.cli.encode import read_texts
    from e5x.data.negatives import mine_file

    try:
        corpus = read_texts(Path(args.corpus), args.field)[0] if args.corpus else None
        report = mine_file(
            args.triples,
            args.output,
            args.model,
            corpus=corpus,
            range_min=args.range_min,
            range_max=args.range_max,
            relative_margin=None if args.relative_margin < 0 else args.relative_margin,
            sampling=args.sampling,
            overwrite=args.overwrite,
            batch_size=args.batch_size,
            seed=args.seed,
            query_prompt=args.query_prompt,
            passage_prompt=args.passage_prompt,
            show_progress=not args.quiet,
        )
    except (FileNotFoundError, ValueError) as e:  # a missing or malformed input
        print(f"e5x mine: error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.output}: {report.rows} rows, {report.mined} of {report.wanted} asking got a negative "
        f"(searched {report.corpus} candidates)"
    )
    return 0
