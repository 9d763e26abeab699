"""``e5x clean``: synth responses -> validated, deduplicated training triples (Parquet).

Examples:
  e5x clean runs/synth --out data/synthetic.parquet
  e5x clean runs/a runs/b --out data/syn.parquet --report data/syn.report.json --chart data/syn.png
  e5x clean runs/synth --quality-checks -wrong_language,prompt_echo=6
  e5x clean runs/synth --config clean.toml     # CleanConfig fields; flags given here win

Quality checks (--quality-checks; default "all"): not_a_task=4, format_residue=0.5,
degenerate=0.5, prompt_echo=8, too_few_words=0.5, wrong_language=0.5. "none" turns all
off, "-NAME" one off, "NAME=X" sets a threshold; see `python -m pydoc e5x.clean.quality`.

Writes the triples (instruction, query, positive, negative, task_type, language, model,
source), a rejection report (counts by reason and field, examples) and a PNG of the
task-type and language mix. Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n", 1)[1]
    p.add_argument("inputs", nargs="*", help="synth run directories or responses.jsonl files")
    p.add_argument("--config", help="TOML file of CleanConfig fields (flags given on the command line win)")
    p.add_argument("--out", default="triples.parquet", help="output Parquet (default: %(default)s)")
    p.add_argument("--report", help="rejection report JSON (default: <out>.report.json)")
    p.add_argument("--chart", help="mix chart PNG (default: <out>.mix.png; '' to skip)")
    p.add_argument("--task-types", dest="task_types_file", help="TOML with custom [task_types.NAME]")
    p.add_argument("--no-extract", action="store_true", help="reject JSON wrapped in prose/code fences")
    p.add_argument("--dedup-fields", default="query,positive", help="comma-separated (default: %(default)s)")
    p.add_argument("--casefold", action="store_true", help="dedup ignoring case")
    p.add_argument("--no-semantic-checks", action="store_true", help="skip identical-field / label-leak checks")
    p.add_argument(
        "--quality-checks",
        default=None,
        help='content checks: "all" (default), "none", "-NAME" (off), "NAME=THRESHOLD", comma-separated',
    )
    p.add_argument("--source", default="synthetic", help="value of the source column (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from e5x.clean import CleanConfig, clean

    given = {
        "inputs": list(args.inputs) or None,
        "out": args.out if args.out != "triples.parquet" else None,
        "report": args.report,
        "chart": args.chart,
        "task_types_file": args.task_types_file,
        "extract": False if args.no_extract else None,
        "dedup_fields": tuple(f.strip() for f in args.dedup_fields.split(",") if f.strip())
        if args.dedup_fields != "query,positive"
        else None,
        "casefold": True if args.casefold else None,
        "semantic_checks": False if args.no_semantic_checks else None,
        "quality_checks": args.quality_checks,
        "source": args.source if args.source != "synthetic" else None,
    }
    try:
        cfg = CleanConfig.from_toml(args.config) if args.config else CleanConfig()
        for k, v in given.items():
            if v is not None:
                setattr(cfg, k, v)
        if not cfg.inputs:
            raise ValueError("no inputs (give synth run directories or responses.jsonl files)")
        report = clean(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"e5x clean: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        from e5x.clean.quality import describe

        reasons = ", ".join(f"{k} {v}" for k, v in report["by_reason"].items()) or "none"
        print(
            f"e5x clean: {report['kept']}/{report['responses']} kept -> {report['output']}\n"
            f"  rejected {report['rejected']}: {reasons}\n"
            f"  quality checks: {describe(report['quality_checks'])}\n"
            f"  report {cfg.paths()[1]}" + (f", chart {report['chart']}" if report["chart"] else ""),
            file=sys.stderr,
        )
    return 0
