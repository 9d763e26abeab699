"""``e5x convert {beir,sts,table} IN -o OUT.parquet``: public datasets as training triples.

    e5x convert beir data/msmarco --split train -o data/public/msmarco-passage.parquet
    e5x convert sts data/stsbenchmark --min-score 4 -o data/public/stsb.parquet
    e5x convert table nli.jsonl --query anchor --positive positive --negative negative \\
        --instruction "Given a premise, retrieve a hypothesis that is entailed by the premise" -o data/public/nli.parquet

The output is what ``e5x train`` reads as a ``[[sources]]`` entry; ``e5x mine`` adds hard
negatives to rows without one. See ``e5x.data.convert``.
"""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    layouts = parser.add_subparsers(dest="layout", required=True, metavar="LAYOUT")
    beir = layouts.add_parser("beir", help="a BEIR folder: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv")
    beir.add_argument("input", help="the BEIR folder")
    beir.add_argument("--split", default="train", help="qrels split (default: train)")
    beir.add_argument(
        "--min-score", type=int, default=1, help="judgements scored at least this are positives (default 1)"
    )
    beir.add_argument("--instruction", help="query instruction (default: E5-mistral's for the folder's task)")
    sts = layouts.add_parser("sts", help="STS-Benchmark pairs (sts-SPLIT.csv or a file)")
    sts.add_argument("input", help="an STS-Benchmark file, or a folder with sts-SPLIT.csv")
    sts.add_argument("--split", default="train", help="split when INPUT is a folder (default: train)")
    sts.add_argument("--min-score", type=float, default=4.0, help="pairs scored at least this (0-5, default 4)")
    sts.add_argument("--instruction", help="query instruction (default: the paper's STS one)")
    table = layouts.add_parser("table", help="a .parquet/.jsonl/.csv/.tsv table with query and positive columns")
    table.add_argument("input", help="the table")
    table.add_argument("--query", default="query", help="query column (default: query)")
    table.add_argument("--positive", default="positive", help="positive column (default: positive)")
    table.add_argument("--negative", help="hard negative column (default: none)")
    group = table.add_mutually_exclusive_group()
    group.add_argument("--instruction", help="one query instruction for every row")
    group.add_argument("--instruction-column", help="column holding each row's instruction")
    table.add_argument("--task-type", help="task_type column value (informative)")
    table.add_argument("--language", help="language column value (informative)")
    table.add_argument("--drop-empty", action="store_true", help="drop rows with an empty query or positive "
                       "(default: such a row is an error)")  # fmt: skip
    for p in (beir, sts, table):
        p.add_argument("-o", "--output", required=True, help="where to write the triples (.parquet)")
        p.add_argument("--source", help="source column value (default: the input's name)")


def run(args: argparse.Namespace) -> int:
    from e5x.data import convert
    from e5x.formats.triples import write_triples

    dropped = 0
    try:
        if args.layout == "beir":
            triples = convert.beir_triples(args.input, args.split, instruction=args.instruction,
                                           min_score=args.min_score, source=args.source)  # fmt: skip
        elif args.layout == "sts":
            extra = {"instruction": args.instruction} if args.instruction else {}
            triples = convert.sts_triples(args.input, args.split, min_score=args.min_score, source=args.source, **extra)
        else:
            triples, dropped = convert.table_triples(
                args.input, query=args.query, positive=args.positive, negative=args.negative,
                instruction=args.instruction, instruction_column=args.instruction_column, source=args.source,
                task_type=args.task_type, language=args.language, drop_empty=args.drop_empty,
            )  # fmt: skip
        write_triples(triples, args.output)
    except (FileNotFoundError, ValueError) as e:  # a missing or malformed input
        print(f"e5x convert: error: {e}", file=sys.stderr)
        return 2
    negatives = triples["negative"].is_not_null().sum()
    print(
        f"wrote {args.output}: {triples.height} triples ({negatives} with a hard negative"
        + (f"; dropped {dropped} rows with an empty query or positive" if dropped else "")
        + ")"
    )
    if triples["instruction"].is_null().all():
        print("note: no instruction: give the source one in the training config (instruction = \"...\") or "
              "its queries train bare (--instruction sets one here)")  # fmt: skip
    return 0
