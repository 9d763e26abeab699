"""Quality of the recipe on real models and data: SmolLM2-135M before -> after e5x training.

Runs the quickstart main job (local llama.cpp LLM -> synth -> clean -> LoRA training on the
synthetic triples plus real STS-B/SciFact training pairs) and then evaluates, in one
process, the base model and the trained model on real test data, with the ablations the
paper reports that are cheap here:

  instruction vs none   queries with vs without the E5 "Instruct: ...\\nQuery: ..." prefix
  last-token vs mean    pooling of the same hidden states

Metrics: STS-B test Spearman (cosine x 100) and SciFact test nDCG@10 (x 100), on the
seeded subsets the table states (0 = the whole test set). Rows are appended to the
result file as they finish, so a long CPU run that is cut short still leaves its numbers.

    python benches/quality.py                                  # quickstart defaults (CPU)
    python benches/quality.py --steps 100 --sts-pairs 0 --scifact-queries 300 --scifact-corpus 0
    python benches/quality.py --reuse e5x-quickstart           # ablations of a finished run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any


def header(device: str) -> str:
    import peft
    import torch
    import transformers

    import e5x

    try:
        import llama_cpp

        llama = llama_cpp.__version__
    except ImportError:
        llama = "not installed"
    cpu = platform.processor() or platform.machine()
    return (
        f"device: {device} ({cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})\n"
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"peft {peft.__version__}, llama-cpp-python {llama}, e5x {e5x.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default="runs/quality", help="quickstart output folder")
    ap.add_argument("--reuse", help="a finished quickstart folder: skip synth+train, run the ablations")
    ap.add_argument("--steps", type=int, help="training steps (default: the quickstart's)")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--train-max-length", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--warmup-steps", type=int)
    ap.add_argument("--eval-max-length", type=int)
    ap.add_argument("--n-examples", type=int, help="synthetic examples")
    ap.add_argument("--sts-pairs", type=int)
    ap.add_argument("--scifact-queries", type=int)
    ap.add_argument("--scifact-corpus", type=int)
    ap.add_argument("--machine", default=None, help="name in the result file (default cpu-Ncore / gpu name)")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)

    import torch

    from e5x.quickstart import _evaluate, format_result, load_config, prepare_eval_data, find_data_dir, quickstart

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    machine = args.machine or (
        f"cpu-{os.cpu_count()}core" if device == "cpu" else device.lower().replace(" ", "-")
    )
    result_path = Path(args.results) / f"quality-{machine}.txt"
    result_path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(result_path, "w")  # noqa: SIM115

    def out(line: str = "") -> None:
        print(line, flush=True)
        fh.write(line + "\n")
        fh.flush()

    out(header(device))
    over: dict[str, Any] = {"train": {}, "eval": {}, "synth": {}}
    if args.steps is not None:
        over["train"]["max_steps"] = args.steps
    if args.batch_size is not None:
        over["train"]["batch_size"] = args.batch_size
    if args.lr is not None:
        over["train"]["lr"] = args.lr
    if args.warmup_steps is not None:
        over["train"]["warmup_steps"] = args.warmup_steps
    if args.train_max_length is not None:
        over["train"]["max_length"] = args.train_max_length
    if args.eval_max_length is not None:
        over["eval"]["max_length"] = args.eval_max_length
    if args.n_examples is not None:
        over["synth"]["n_examples"] = args.n_examples
    for k in ("sts_pairs", "scifact_queries", "scifact_corpus"):
        if getattr(args, k) is not None:
            over["eval"][k] = getattr(args, k)

    t0 = time.perf_counter()
    if args.reuse:
        qs_dir = Path(args.reuse)
        cfg = json.loads((qs_dir / "quickstart-config.json").read_text())
        summary = json.loads((qs_dir / "quickstart.json").read_text())
        trained = Path(summary["model_dir"])
        base = Path(json.loads((qs_dir / "train" / "train_config.json").read_text())["model"])
        if over["eval"] or over["train"] or over["synth"]:
            ap.error("--reuse takes the run's own settings; drop the size/training options")
        tasks, sizes = prepare_eval_data(find_data_dir(cfg["data_dir"] or None), qs_dir / "data" / "eval-bench",
                                         cfg["eval"], cfg["seed"])  # fmt: skip
        out(f"reusing the finished quickstart run in {qs_dir} (train losses {summary.get('train_losses')})")
    else:
        over["out_dir"] = args.out_dir
        res = quickstart(overrides=over)
        out(format_result(res))
        cfg, trained = res.config, Path(res.model_dir)  # type: ignore[arg-type]
        base = Path(json.loads((res.out_dir / "train" / "train_config.json").read_text())["model"])
        tasks, sizes = prepare_eval_data(find_data_dir(cfg["data_dir"] or None), res.out_dir / "data" / "eval",
                                         cfg["eval"], cfg["seed"])  # fmt: skip
        qs_dir = res.out_dir
        summary = json.loads((qs_dir / "quickstart.json").read_text())

    t = cfg["train"]
    out()
    out(f"training: {t['max_steps']} steps x {t['batch_size']} queries, max length {t['max_length']}, "
        f"lr {t['lr']}, LoRA r16/a32 on all linear layers, InfoNCE tau 0.02, in-batch + hard negatives; "
        f"data {summary.get('train_rows')}; synthetic kept {summary.get('synthetic_rows')} "
        f"(clean: {summary.get('clean_report')})")  # fmt: skip
    out(f"eval data: STS-B test {sizes['STSBenchmark']['pairs']} pairs; SciFact test {sizes['SciFact']['queries']} "
        f"queries over {sizes['SciFact']['corpus']} abstracts (all relevant + seeded random others); "
        f"max length {cfg['eval']['max_length']}")  # fmt: skip
    out()
    cols = f"{'model':<9}{'pooling':<12}{'instruction':<13}{'STS-B Spearman':>16}{'SciFact nDCG@10':>17}{'s':>7}"
    out(cols)
    out("-" * len(cols))
    ev = cfg["eval"]
    rows: list[dict[str, Any]] = []

    def row(name: str, pool_name: str, instr: bool, sts: float, sf: float, secs: float) -> None:
        out(f"{name:<9}{pool_name:<12}{'yes' if instr else 'no':<13}{sts:>16.2f}{sf:>17.2f}{secs:>7.0f}")
        rows.append({"model": name, "pooling": pool_name, "instruction": instr, "sts": sts, "scifact": sf})

    sts_key, sf_key = "STSBenchmark (cosine_spearman)", "SciFact (ndcg_at_10)"
    secs = summary.get("seconds", {})
    # The quickstart's own evaluations are the (last-token, instruction) rows.
    row("base", "last_token", True, summary["before"][sts_key], summary["before"][sf_key],
        secs.get("evaluate before training", float("nan")))  # fmt: skip
    row("trained", "last_token", True, summary["after"][sts_key], summary["after"][sf_key],
        secs.get("evaluate after training", float("nan")))  # fmt: skip
    for name, path, pooling, instr in (
        ("base", base, "mean", False),
        ("base", base, "last_token", False),
        ("trained", trained, None, False),
        ("trained", trained, "mean", True),
    ):
        t1 = time.perf_counter()
        scores = _evaluate(path, tasks, ev, pooling=pooling, use_instructions=instr,
                           out_json=qs_dir / f"bench-{name}-{pooling or 'saved'}-{int(instr)}.json")  # fmt: skip
        row(name, pooling or "last_token", instr, scores[sts_key], scores[sf_key], time.perf_counter() - t1)
    out()
    out(f"total {time.perf_counter() - t0:.0f}s; quickstart stage seconds {summary.get('seconds')}")
    (result_path.with_suffix(".json")).write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")
    fh.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
