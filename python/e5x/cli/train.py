"""``e5x train CONFIG.toml [key=value ...]``: run the training recipe of a TOML config.

Examples:
  e5x train configs/tiny-cpu.toml --check
  e5x train configs/e5-mistral.toml lr=2e-4 max_steps=1000 output_dir=runs/short
  e5x train configs/e5-mistral.toml sources.0.ratio=0.5 'matryoshka_dims=[1024, 256]'

Several processes/GPUs: ``torchrun --nproc-per-node 8 -m e5x train CONFIG.toml``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from e5x.cli import _config_args as cli_config

ALIASES = [
    cli_config.alias("output_dir"),
    cli_config.alias("max_steps"),
    cli_config.alias("resume", "--no-resume", value="false"),
]


def configure(parser: argparse.ArgumentParser) -> None:
    from e5x.training.config import TrainConfig

    parser.epilog = __doc__.split("\n", 1)[1]
    cli_config.add_arguments(parser, TrainConfig, ALIASES, legacy_config_flag=False)
    parser.add_argument(
        "--allow-config-change",
        action="append",
        default=[],
        metavar="FIELD[,FIELD]",
        help="resume although these config fields changed since the checkpoint (repeatable; "
        "e.g. max_steps to extend a finished run, lr, sources.0.data); without it a "
        "changed field stops the resume with exit 2",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the config and data, print the data mix of an epoch, then exit without loading a model",
    )


def run(args: argparse.Namespace) -> int:
    from e5x.config import load
    from e5x.data.triples import DataError
    from e5x.training.config import ConfigError, TrainConfig

    try:
        config, overrides, _ = cli_config.parse(args, TrainConfig, ALIASES)
        if config is None:
            raise ConfigError("no recipe: give a CONFIG.toml first, then key=value words")
        args.config = config
        cfg = load(TrainConfig, config, overrides)
        stats = cfg.validate(allow_missing=args.check)
        report = data_plan(cfg, stats) if args.check else ""
    except (ConfigError, DataError) as exc:
        print(f"e5x train: error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        unprepared = [s.dataset for s in cfg.sources if s.dataset and s.unprepared]
        absent = [f"{s.label} ({s.path})" for s in cfg.sources if s.missing and not s.dataset]
        if unprepared or absent:
            print(report)
            problems = []
            if unprepared:
                problems.append(f"{len(unprepared)} dataset source(s) not prepared yet: {', '.join(unprepared)}; "
                                f"prepare them with: e5x data prepare {args.config}")  # fmt: skip
            if absent:
                problems.append(f"no data at: {', '.join(absent)}")
            print(f"e5x train: {'; '.join(problems)}", file=sys.stderr)
            return 2
        print(f"{args.config}: OK\n{report}")
        return 0

    from e5x.training.loop import TrainingDiverged, train

    try:
        allowed = [name.strip() for arg in args.allow_config_change for name in arg.split(",") if name.strip()]
        result = train(cfg, allow_config_change=allowed)
    except (ConfigError, DataError) as exc:  # e.g. an empty row found while loading the data
        print(f"e5x train: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"e5x train: {exc}", file=sys.stderr)
        return 3
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: one report, from rank 0
        return 0
    if result.interrupted:
        print(
            f"stopped at step {result.step}/{result.total_steps}; checkpoint {result.checkpoint} "
            "(run the same command again to resume)"
        )
        return 0
    if result.model_dir is not None:
        print(f"model saved to {result.model_dir}")
    return 0


def data_plan(cfg: Any, stats: list[Any]) -> str:
    """The data mix one epoch draws (rows, ratios, shares, negatives, instructions) and the
    run's length, as the training loop will plan them; sources not prepared yet (``None``
    stats) are listed and left out of the plan."""
    from e5x.data import BatchPlan
    from e5x.training.config import ConfigError

    ready = [i for i, st in enumerate(stats) if st is not None]
    counts: dict[int, int] = {}
    plan = None
    if ready:
        try:
            plan = BatchPlan([stats[i].rows for i in ready], [cfg.sources[i].ratio for i in ready], cfg.batch_size,
                             cfg.seed, cfg.task_homogeneous)  # fmt: skip
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        counts = dict(zip(ready, plan.counts, strict=True))
    epoch = sum(counts.values())
    lines = ["| source | rows | ratio | per epoch | share | with hard negative | query instruction |",
             "|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    bare = []
    for i, (source, st) in enumerate(zip(cfg.sources, stats, strict=True)):
        if source.instruction:
            instruction = source.instruction if len(source.instruction) <= 48 else source.instruction[:45] + "..."
        elif source.dataset:
            instruction = _registry_instructions(source)
        elif st is None:
            instruction = "per row"
        elif st.without_instruction:
            instruction = f"none on {st.without_instruction:,} rows"
            bare.append(source.label)
        else:
            instruction = "per row"
        if st is None:
            state = "not prepared" if source.dataset else "not found"
            lines.append(f"| {source.label} | {state} | {source.ratio:g} | | | | {instruction} |")
            continue
        lines.append(f"| {source.label} | {st.rows:,} | {source.ratio:g} | {counts[i]:,} | {counts[i] / epoch:.1%} "
                     f"| {st.with_negative / st.rows:.1%} | {instruction} |")  # fmt: skip
    if plan is not None:
        total = plan.total_steps(cfg.epochs, cfg.max_steps)
        scope = f" (the {len(ready)} prepared source(s))" if len(ready) < len(stats) else ""
        lines.append(f"one epoch{scope}: {epoch:,} examples = {plan.steps_per_epoch:,} steps of {cfg.batch_size:,} "
                     f"queries; this run: {total:,} steps ({total / plan.steps_per_epoch:.2f} epochs)")  # fmt: skip
    if bare:
        lines.append(f"note: rows without an instruction train with bare queries ({', '.join(bare)}); "
                     "set instruction = \"...\" on the source to give them one")  # fmt: skip
    return "\n".join(lines)


def _registry_instructions(source: Any) -> str:
    """The instruction(s) a registered dataset's prepared rows will carry."""
    from e5x.data.registry import get

    return " / ".join(get(source.dataset).instructions)
