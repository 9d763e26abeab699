"""``e5x clean [CONFIG.toml] [INPUT...] [key=value ...]``: synth responses -> deduplicated training triples.

Validated, quality-checked and deduplicated, written as Parquet.

INPUTs (synth run directories or responses.jsonl files) set ``inputs``.

Examples:
  e5x clean runs/synth --out data/synthetic.parquet
  e5x clean runs/a runs/b --out data/syn.parquet --report data/syn.report.json --chart data/syn.png
  e5x clean runs/synth --quality-checks -wrong_language,prompt_echo=6
  e5x clean clean.toml runs/synth out=data/syn.parquet casefold=true   # words given here win

Quality checks (quality_checks, --quality-checks; default "all"): not_a_task=4,
format_residue=0.5, degenerate=0.5, prompt_echo=8, too_few_words=0.5, wrong_language=0.5.
"none" turns all off, "-NAME" one off, "NAME=X" sets a threshold; see
`python -m pydoc e5x.cleaning.quality`.

Writes the triples (instruction, query, positive, negative, task_type, language, model,
source), a rejection report (counts by reason and field, examples) and a PNG of the
task-type and language mix. Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys

from e5x.cli import _config_args as cli_config

ALIASES = [
    cli_config.alias("out"),
    cli_config.alias("report"),
    cli_config.alias("chart"),
    cli_config.alias("task_types_file", "--task-types"),
    cli_config.alias("extract", "--no-extract", value="false"),
    cli_config.alias("dedup_fields", csv=True),
    cli_config.alias("casefold", value="true"),
    cli_config.alias("semantic_checks", "--no-semantic-checks", value="false"),
    cli_config.alias("quality_checks"),
    cli_config.alias("source"),
]


def configure(p: argparse.ArgumentParser) -> None:
    from e5x.cleaning import CleanConfig

    p.epilog = __doc__.split("\n", 1)[1]
    cli_config.add_arguments(p, CleanConfig, ALIASES, positionals="[INPUT...]")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from e5x.cleaning import CleanConfig, clean
    from e5x.config import load

    config, overrides, inputs = cli_config.parse(args, CleanConfig, ALIASES, positionals=True)
    legacy = [f"inputs={cli_config.toml_list(inputs)}"] if inputs else []
    cfg = load(CleanConfig, config, legacy + overrides)  # a bad setting: one line, exit 2
    report = clean(cfg)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        from e5x.cleaning.quality import describe

        reasons = ", ".join(f"{k} {v}" for k, v in report["by_reason"].items()) or "none"
        print(
            f"e5x clean: {report['kept']}/{report['responses']} kept -> {report['output']}\n"
            f"  rejected {report['rejected']}: {reasons}\n"
            f"  quality checks: {describe(report['quality_checks'])}\n"
            f"  report {cfg.paths()[1]}" + (f", chart {report['chart']}" if report["chart"] else ""),
            file=sys.stderr,
        )
    return 0
