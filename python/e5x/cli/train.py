"""``e5x train CONFIG.toml``: run the training recipe of a TOML config.

Several processes/GPUs: ``torchrun --nproc-per-node 8 -m e5x train CONFIG.toml``.
"""

from __future__ import annotations

import argparse
import os
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="TOML recipe, e.g. configs/tiny-cpu.toml")
    parser.add_argument("--output-dir", help="override output_dir")
    parser.add_argument("--max-steps", type=int, help="override max_steps")
    parser.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    parser.add_argument("--check", action="store_true",
                        help="validate the config and data, then exit without loading a model")


def run(args: argparse.Namespace) -> int:
    from e5x.data.triples import DataError
    from e5x.train.config import ConfigError, TrainConfig

    try:
        cfg = TrainConfig.from_toml(args.config)
        if args.output_dir:
            cfg.output_dir = args.output_dir
        if args.max_steps:
            cfg.max_steps = args.max_steps
        if args.no_resume:
            cfg.resume = False
        cfg.validate()
    except (ConfigError, DataError) as exc:
        print(f"e5x train: error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.config}: OK ({len(cfg.sources)} source(s))")
        return 0

    from e5x.train.loop import TrainingDiverged, train

    try:
        result = train(cfg)
    except (ConfigError, DataError) as exc:  # e.g. an empty row found while loading the data
        print(f"e5x train: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"e5x train: {exc}", file=sys.stderr)
        return 3
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: one report, from rank 0
        return 0
    if result.interrupted:
        print(f"stopped at step {result.step}/{result.total_steps}; checkpoint {result.checkpoint} "
              "(run the same command again to resume)")
        return 0
    if result.model_dir is not None:
        print(f"model saved to {result.model_dir}")
    return 0
