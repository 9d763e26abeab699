"""Shared by the quality ablations on SmolLM2-135M (hard_negatives.py, matryoshka.py): their
options, the result file with its device/versions header, and a training with the
quickstart's settings."""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def parser(doc: str, *, work_dir: str, steps: int) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--model", required=True, help="HF checkpoint of the base model")
    ap.add_argument("--work-dir", default=work_dir)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--scifact-corpus", type=int, default=1300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--machine", default=f"cpu-{os.cpu_count()}core")
    return ap


def results_file(title: str, name: str, args: argparse.Namespace, versions: dict[str, str]) -> Callable[[str], None]:
    """A writer for benches/results/<name>-<machine>.txt: each line is printed and the file
    rewritten, so a stopped run keeps what it measured. Writes the header first."""
    from e5x.quickstart import DEFAULTS

    path = Path(args.results) / f"{name}-{args.machine}.txt"
    lines: list[str] = []

    def out(line: str) -> None:
        print(line, flush=True)
        lines.append(line)
        path.write_text("\n".join(lines) + "\n")

    train = DEFAULTS["train"]
    out(
        f"# {title}  device: CPU {platform.machine()}, {os.cpu_count()} cores, {args.threads} torch threads  "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})"
    )
    out(f"# python {platform.python_version()}, " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    out(
        f"# base model {args.model}; {args.steps} steps x {train['batch_size']} queries, max length "
        f"{train['max_length']}, lr {train['lr']}, warmup {train['warmup_steps']}"
    )
    return out


def train_quickstart(
    args: argparse.Namespace, output_dir: Path, sources: list[dict[str, Any]], **overrides: Any
) -> Any:
    """e5x.train with the quickstart's training settings, --steps steps, seed 0. A training
    stopped by SIGTERM (it checkpoints and returns) ends the benchmark: rerun it to resume."""
    from e5x.quickstart import DEFAULTS
    from e5x.training import TrainConfig, train

    fields = dict(DEFAULTS["train"], model=args.model, max_steps=args.steps, output_dir=str(output_dir), seed=0,
                  progress=False, sources=sources, **overrides)  # fmt: skip
    result = train(TrainConfig.from_dict(fields))
    if result.interrupted:
        raise SystemExit(f"{output_dir}: training stopped at step {result.step}; run the benchmark again to resume")
    return result


# The evaluation of every ablation: last-token pooling with instructions, max length 64.
EVAL = {
    "sts_pairs": 0,
    "scifact_queries": 0,
    "max_length": 64,
    "batch_size": 32,
    "pooling": "last_token",
    "use_instructions": True,
}


def eval_sets(args: argparse.Namespace, work: Path) -> tuple[list[str], dict[str, dict[str, int]]]:
    """STS-B test (every pair) and SciFact test (all 300 queries over their relevant
    abstracts + seeded random others, --scifact-corpus in all), as e5x.evaluate task specs."""
    from e5x.quickstart import prepare_eval_data, real_data

    return prepare_eval_data(real_data(), work / "eval", {**EVAL, "scifact_corpus": args.scifact_corpus}, 0)
