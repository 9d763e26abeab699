"""Quality of the recipe on real models and data: SmolLM2-135M before -> after e5x training.

Runs the quickstart main job (local llama.cpp LLM -> synth -> clean -> LoRA training on the
synthetic triples plus real STS-B/SciFact training pairs), then evaluates, in one process,
the base model, the trained model and intermediate training checkpoints on real test data,
with the ablations the paper reports that are cheap here:

  instruction vs none   queries with vs without the E5 "Instruct: ...\\nQuery: ..." prefix
  last-token vs mean    pooling of the same hidden states (evaluation-time ablation)

Metrics: STS-B test Spearman (cosine x 100) and SciFact test nDCG@10 (x 100), computed by
``e5x.evaluate`` on the sizes the result file states (0 = the whole test set). To afford
four ablation rows per model on 2 CPU cores, the bench encodes each text once per model:
one forward over ``text + EOS`` gives both the last-token (EOS) embedding and the mean of
the positions before the EOS, which under causal attention equals the mean pooling of the
text without EOS (checked against ``Embedder`` at start-up); corpus embeddings are shared by
the instruction / no-instruction rows. Rows are appended to the result file as they finish,
so a run that is cut short still leaves its numbers.

CPU training is slow and its speed depends on the machine's load, so ``--train-budget-min``
stops training cleanly (SIGTERM -> the train loop finishes the step and checkpoints) when the
budget is spent; the last checkpoint is then the trained model and the table says which step.

    # the committed CPU result (benches/results/quality-cpu-2core.txt): train, then evaluate
    python benches/quality.py --n-examples 12 --steps 150 --batch-size 16 --train-max-length 64 \\
        --lr 3e-4 --warmup-steps 10 --save-every 15 --train-budget-min 45 --scifact-corpus 1300
    python benches/quality.py --reuse runs/quality --scifact-corpus 1300 --curve-points 3   # evaluate again
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

STS_KEY, SF_KEY = "STSBenchmark (cosine_spearman)", "SciFact (ndcg_at_10)"


def header(device: str) -> str:
    import e5x
    import peft
    import torch
    import transformers

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


def renice_self(niceness: int) -> None:
    """Lower the priority of every thread of this process (nice is per thread on Linux)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), niceness)
        except OSError:
            pass


# ----------------------------------------------------------------------------- encoding
class DualPoolEmbedder:
    """Duck-typed ``Embedder`` for ``e5x.evaluate`` that encodes each text once per model.

    One forward over the text with EOS appended (right padding) yields the last-token
    embedding (the EOS state) and the mean of the states before the EOS, i.e. the mean
    pooling of the text without EOS (causal attention: earlier states do not see the EOS).
    ``pooling`` picks which one ``encode`` returns; both are L2-normalised.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_length: int, batch_size: int, name: str) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.name = name
        self.pooling = "last_token"
        self.cache: dict[str, tuple[Any, Any]] = {}
        self.forward_seconds = 0.0

    def format_query(self, query: str, instruction: str | None) -> str:
        from e5x.model.text import format_query

        return format_query(query, instruction)

    def encode_queries(self, texts: Any, instruction: str | None = None, **kw: Any) -> Any:
        return self.encode([self.format_query(t, instruction) for t in texts], **kw)

    def encode_documents(self, texts: Any, **kw: Any) -> Any:
        return self.encode(list(texts), **kw)

    def _fill(self, texts: list[str]) -> None:
        import torch
        from e5x.model.text import encode, pad, pad_token_id

        todo = sorted({t for t in texts if t not in self.cache})
        if not todo:
            return
        t0 = time.perf_counter()
        ids = encode(self.tokenizer, todo, self.max_length)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        pid = pad_token_id(self.tokenizer)
        with torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                rows = order[s : s + self.batch_size]
                input_ids, mask = pad([ids[i] for i in rows], pid, "right")
                hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
                lengths = mask.sum(1)
                last = hidden[torch.arange(len(rows)), lengths - 1]
                body = mask.clone()
                body[torch.arange(len(rows)), lengths - 1] = 0  # drop the EOS from the mean
                m = body.unsqueeze(-1).float()
                mean = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
                last = torch.nn.functional.normalize(last, dim=-1)
                mean = torch.nn.functional.normalize(mean, dim=-1)
                for j, i in enumerate(rows):
                    self.cache[todo[i]] = (last[j].clone(), mean[j].clone())
        self.forward_seconds += time.perf_counter() - t0

    def encode(self, texts: Any, *, output: str = "numpy", **_: Any) -> Any:
        import torch

        texts = list(texts)
        self._fill(texts)
        k = 0 if self.pooling == "last_token" else 1
        out = torch.stack([self.cache[t][k] for t in texts]) if texts else torch.empty(0, self.model.config.hidden_size)
        return out if output == "torch" else out.numpy()


def check_dual_pool(base: str | Path, max_length: int) -> str:
    """The dual encoder must equal ``Embedder`` (last-token and mean) on untruncated texts."""
    from e5x.model.embedder import Embedder

    texts = ["A man is playing a guitar.", "Instruct: Retrieve semantically similar text.\nQuery: A dog runs.",
             "Three children are sitting on a bench in the park, eating ice cream."]  # fmt: skip
    diffs = []
    for pooling in ("last_token", "mean"):
        ref = Embedder.from_pretrained(base, pooling=pooling, max_length=max_length, show_progress=False)
        dual = DualPoolEmbedder(ref.model, ref.tokenizer, max_length=max_length, batch_size=4, name="check")
        dual.pooling = pooling
        diffs.append(float(abs(ref.encode(texts) - dual.encode(texts)).max()))
    if max(diffs) > 1e-4:
        raise AssertionError(
            f"dual-pool encoder differs from Embedder: max |diff| last-token {diffs[0]}, mean {diffs[1]}"
        )
    return f"dual-pool encoder == Embedder on 3 texts: max |diff| last-token {diffs[0]:.1e}, mean {diffs[1]:.1e}"


# ----------------------------------------------------------------------------- models
def load_base(base: str | Path) -> tuple[Any, Any]:
    from e5x.model.loading import load_base_model, load_tokenizer

    return load_base_model(str(base)), load_tokenizer(str(base))


def load_checkpoint(base: str | Path, train_cfg: dict[str, Any], ckpt: Path) -> tuple[Any, Any]:
    """Base model + LoRA with the adapter weights of a training checkpoint."""
    import torch
    from e5x.model.loading import apply_lora

    model, tok = load_base(base)
    model = apply_lora(model, train_cfg["lora_r"], train_cfg["lora_alpha"], train_cfg["lora_dropout"],
                       train_cfg["lora_target_modules"], gradient_checkpointing=False)  # fmt: skip
    state = torch.load(ckpt / "trainable.pt", map_location="cpu", weights_only=True)
    res = model.load_state_dict(state, strict=False)
    if res.unexpected_keys:
        raise RuntimeError(f"{ckpt}: checkpoint keys not in the model: {res.unexpected_keys[:3]}")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if missing := trainable - set(state):
        raise RuntimeError(f"{ckpt}: checkpoint lacks adapter weights {sorted(missing)[:3]}")
    return model.eval(), tok


def checkpoints(train_dir: Path) -> dict[int, Path]:
    root = train_dir / "checkpoints"
    out = {}
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith("step-") and (p / "state.json").is_file():
                out[int(json.loads((p / "state.json").read_text())["step"])] = p
    return dict(sorted(out.items()))


def pick_curve(steps: list[int], final: int, n: int) -> list[int]:
    """About ``n`` checkpoints spread over training, excluding the final one."""
    inner = [s for s in steps if s < final]
    if len(inner) <= n:
        return inner
    return sorted({inner[round(i * (len(inner) - 1) / max(1, n - 1))] for i in range(n)})


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default="runs/quality", help="quickstart output folder")
    ap.add_argument("--reuse", help="a finished or stopped quickstart folder: skip synth+train, evaluate")
    ap.add_argument("--steps", type=int, help="training steps (default: the quickstart's)")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--train-max-length", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--warmup-steps", type=int)
    ap.add_argument("--save-every", type=int, default=25, help="checkpoint interval (curve points)")
    ap.add_argument(
        "--train-budget-min",
        type=float,
        default=0.0,
        help="stop training cleanly after this many minutes (0 = no limit)",
    )
    ap.add_argument("--n-examples", type=int, help="synthetic examples")
    ap.add_argument("--nice", type=int, default=19, help="niceness after synthesis (the LLM server runs un-niced)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    # The quickstart's own before/after table runs on its small seeded subsets (a cross-check);
    # the bench's rows use these sizes.
    ap.add_argument("--sts-pairs", type=int, default=0, help="STS-B test pairs (0 = all 1,379)")
    ap.add_argument("--scifact-queries", type=int, default=0, help="SciFact test queries (0 = all 300)")
    ap.add_argument("--scifact-corpus", type=int, default=1300, help="abstracts: relevant + random (0 = all 5,183)")
    ap.add_argument("--eval-max-length", type=int, default=64)
    ap.add_argument("--eval-batch-size", type=int, default=32)
    ap.add_argument("--curve-points", type=int, default=3, help="intermediate checkpoints evaluated on STS-B")
    ap.add_argument("--curve-sts-pairs", type=int, default=300, help="STS-B test pairs for the curve (seeded)")
    ap.add_argument("--machine", default=None, help="name in the result file (default cpu-Ncore / gpu name)")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from e5x.eval import EvalConfig, evaluate
    from e5x.quickstart import (
        format_result,
        prepare_eval_data,
        quickstart,
        real_data,
    )

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    machine = args.machine or (f"cpu-{os.cpu_count()}core" if device == "cpu" else device.lower().replace(" ", "-"))
    result_path = Path(args.results) / f"quality-{machine}.txt"
    result_path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(result_path, "w")  # noqa: SIM115
    record: dict[str, Any] = {"command": " ".join(sys.argv), "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                              "rows": [], "curve": []}  # fmt: skip

    def out(line: str = "") -> None:
        print(line, flush=True)
        fh.write(line + "\n")
        fh.flush()

    def save_json() -> None:
        result_path.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str) + "\n")

    out(header(device))
    out(f"command: {record['command']}")
    t_start = time.perf_counter()
    stage_s: dict[str, float] = {}

    if args.reuse:
        qs_dir = Path(args.reuse)
        cfg = json.loads((qs_dir / "quickstart-config.json").read_text())
        out(f"reusing the quickstart run in {qs_dir}")
    else:
        # The quickstart's own before/after table: a small cross-check of its pipeline.
        over: dict[str, Any] = {"out_dir": args.out_dir, "synth": {},
                                "eval": {"sts_pairs": 100, "scifact_queries": 20, "scifact_corpus": 60},
                                "train": {"save_every": args.save_every, "keep_checkpoints": 10_000}}  # fmt: skip
        for opt, key in (("steps", "max_steps"), ("batch_size", "batch_size"), ("lr", "lr"),
                         ("warmup_steps", "warmup_steps"), ("train_max_length", "max_length")):  # fmt: skip
            if getattr(args, opt) is not None:
                over["train"][key] = getattr(args, opt)
        if args.n_examples is not None:
            over["synth"]["n_examples"] = args.n_examples
        qs_dir = Path(args.out_dir)
        marks: dict[str, float] = {}

        def echo(msg: str) -> None:
            print(msg, file=sys.stderr, flush=True)
            if m := re.match(r"e5x quickstart: (.+) done in ([0-9.]+)s", msg):
                stage_s[m.group(1)] = float(m.group(2))
                if m.group(1).startswith("synthesize"):
                    renice_self(args.nice)  # the LLM server is gone; training/eval yield the CPU
                    print(f"quality: reniced to {args.nice}", file=sys.stderr, flush=True)
            elif msg.startswith("e5x quickstart: train (LoRA) ..."):
                marks["train"] = time.time()

        def watchdog() -> None:
            # SIGTERM only while training runs: the loop then finishes its step and checkpoints.
            while args.train_budget_min > 0:
                time.sleep(5)
                t = marks.get("train")
                if t and time.time() - t > args.train_budget_min * 60 and not (qs_dir / "train" / "model").exists():
                    print("quality: training budget spent, stopping training (SIGTERM)", file=sys.stderr, flush=True)
                    os.kill(os.getpid(), signal.SIGTERM)
                    return

        threading.Thread(target=watchdog, daemon=True).start()
        try:
            res = quickstart(overrides=over, echo=echo)
            out(format_result(res))
        except RuntimeError as exc:
            if "training stopped early" not in str(exc):
                raise
            out(f"quickstart: {exc} (the bench evaluates the last checkpoint)")
        cfg = json.loads((qs_dir / "quickstart-config.json").read_text())
        marks.pop("train", None)

    train_dir = qs_dir / "train"
    train_cfg = json.loads((train_dir / "train_config.json").read_text())
    base = train_cfg["model"]
    metrics = [json.loads(ln) for ln in (train_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    ckpts = checkpoints(train_dir)
    if not ckpts:
        raise SystemExit(f"{train_dir}: no training checkpoint to evaluate")
    final_step = max(ckpts)
    train_s = sum(r["seconds"] for r in metrics)
    record["train"] = {
        "config": {
            k: train_cfg[k]
            for k in (
                "batch_size",
                "max_length",
                "lr",
                "warmup_steps",
                "temperature",
                "lora_r",
                "lora_alpha",
                "max_steps",
                "weight_decay",
                "chunk_size",
            )
        },
        "sources": train_cfg["sources"],
        "steps_done": final_step,
        "train_seconds": train_s,
        "losses": [r["loss"] for r in metrics],
    }
    summary_path = qs_dir / "quickstart.json"
    if summary_path.exists():
        record["quickstart"] = json.loads(summary_path.read_text())
    record["quickstart_stage_seconds"] = stage_s
    out()
    out(f"training: {final_step} of {train_cfg['max_steps']} steps done in {train_s:.0f}s "
        f"({train_s / max(1, len(metrics)):.1f} s/step) x {train_cfg['batch_size']} queries, max length "
        f"{train_cfg['max_length']}, lr {train_cfg['lr']} (warmup {train_cfg['warmup_steps']}, linear decay to "
        f"{train_cfg['max_steps']}), LoRA r{train_cfg['lora_r']}/a{train_cfg['lora_alpha']}, InfoNCE tau "
        f"{train_cfg['temperature']}, in-batch + hard negatives")  # fmt: skip
    from e5x.quickstart import _rows

    sizes_train = {s["name"]: _rows(Path(s["path"])) for s in train_cfg["sources"]}
    out(f"training data rows: {sizes_train} (each step draws {train_cfg['batch_size']} queries; "
        f"{final_step * train_cfg['batch_size']} query draws = "
        f"{final_step * train_cfg['batch_size'] / max(1, sum(sizes_train.values())):.2f} epochs)")  # fmt: skip
    n = len(metrics)
    if n:
        w = max(1, n // 10)
        windows = [(metrics[i]["step"], metrics[min(n, i + w) - 1]["step"],
                    sum(r["loss"] for r in metrics[i : i + w]) / len(metrics[i : i + w])) for i in range(0, n, w)]  # fmt: skip
        out("training loss (mean per window of steps): " + ", ".join(f"{a}-{b}: {v:.3f}" for a, b, v in windows))
    save_json()

    # Evaluation data: the bench's sizes.
    ev = {"sts_pairs": args.sts_pairs, "scifact_queries": args.scifact_queries, "scifact_corpus": args.scifact_corpus}
    real_sets = real_data(cfg["data_mirror"] or None)
    tasks, sizes = prepare_eval_data(real_sets, qs_dir / "data" / "eval-bench", ev, cfg["seed"])
    record["eval_sizes"] = sizes
    qrels_file = qs_dir / "data" / "eval-bench" / "SciFact" / "qrels" / "test.tsv"
    n_rel = len({ln.split("\t")[1] for ln in qrels_file.read_text().splitlines()[1:] if ln.strip()})
    out(f"eval data: STS-B test {sizes['STSBenchmark']['pairs']} pairs; SciFact test {sizes['SciFact']['queries']} "
        f"queries over {sizes['SciFact']['corpus']} abstracts (the {n_rel} relevant to them + seeded random "
        f"others, seed {cfg['seed']}); max length {args.eval_max_length}")  # fmt: skip
    renice_self(args.nice)  # evaluation yields the CPU to other work on the machine
    out(check_dual_pool(base, args.eval_max_length))
    out()
    cols = (f"{'model':<9}{'step':>6}  {'pooling':<12}{'instruction':<13}{'STS-B Spearman':>16}"
            f"{'SciFact nDCG@10':>17}{'s':>7}")  # fmt: skip
    out(cols)
    out("-" * len(cols))

    def run_rows(emb: DualPoolEmbedder, name: str, step: int, task_list: list[str], instr: bool, kind: str) -> None:
        """Both poolings for one instruction setting (one set of forwards, cached per text)."""
        for pooling in ("last_token", "mean"):
            t1, f1 = time.perf_counter(), emb.forward_seconds
            emb.pooling = pooling
            report = evaluate(EvalConfig(tasks=task_list, use_instructions=instr, batch_size=args.eval_batch_size,
                                         max_length=args.eval_max_length, show_progress=False,
                                         output=str(qs_dir / f"bench-{kind}-{name}-{step}-{pooling}-{int(instr)}.json")),
                              embedder=emb)  # type: ignore[arg-type]  # fmt: skip
            scores = {f"{r.task} ({r.main_score})": float(r.score) for r in report.results}
            secs = time.perf_counter() - t1
            sts, sf = scores.get(STS_KEY, float("nan")), scores.get(SF_KEY, float("nan"))
            out(f"{name:<9}{step:>6}  {pooling:<12}{'yes' if instr else 'no':<13}{sts:>16.2f}"
                f"{sf:>17.2f}{secs:>7.0f}")  # fmt: skip
            record["rows" if kind == "main" else "curve"].append(
                {"model": name, "step": step, "pooling": pooling, "instruction": instr, "sts": sts,
                 "scifact": sf, "seconds": secs, "forward_seconds": emb.forward_seconds - f1})  # fmt: skip
            save_json()

    # Order: the before -> after headline (with instruction) first, then the no-instruction
    # ablation, then the curve, so a run cut short keeps the most important rows.
    # Trained = the last checkpoint (the exported model's weights when training finished).
    m, tk = load_checkpoint(base, train_cfg, ckpts[final_step])
    trained = DualPoolEmbedder(m, tk, max_length=args.eval_max_length, batch_size=args.eval_batch_size, name="trained")
    m, tk = load_base(base)
    based = DualPoolEmbedder(m, tk, max_length=args.eval_max_length, batch_size=args.eval_batch_size, name="base")
    for instr in (True, False):
        run_rows(trained, "trained", final_step, tasks, instr, "main")
        run_rows(based, "base", 0, tasks, instr, "main")
    # Evidence of the training curve: STS-B (a seeded subset of the same test pairs, so base
    # and final come from the cache) at a few intermediate checkpoints.
    curve_tasks, curve_sizes = prepare_eval_data(real_sets, qs_dir / "data" / "eval-curve",
                                                 {"sts_pairs": args.curve_sts_pairs, "scifact_queries": 1,
                                                  "scifact_corpus": 1}, cfg["seed"])  # fmt: skip
    curve_tasks = [t for t in curve_tasks if t.startswith("STSBenchmark=")]
    record["curve_sts_pairs"] = curve_sizes["STSBenchmark"]["pairs"]
    out()
    out(f"curve: STS-B test, seeded {curve_sizes['STSBenchmark']['pairs']} of the pairs above, with instruction")
    out(cols)
    out("-" * len(cols))
    run_rows(based, "base", 0, curve_tasks, True, "curve")
    for step in pick_curve(list(ckpts), final_step, args.curve_points):
        m, tk = load_checkpoint(base, train_cfg, ckpts[step])
        run_rows(DualPoolEmbedder(m, tk, max_length=args.eval_max_length, batch_size=args.eval_batch_size,
                                  name="ckpt"), "ckpt", step, curve_tasks, True, "curve")  # fmt: skip
        del m
    run_rows(trained, "trained", final_step, curve_tasks, True, "curve")
    out()
    record["total_seconds"] = time.perf_counter() - t_start
    out(f"total {record['total_seconds']:.0f}s; quickstart stage seconds {stage_s}")
    save_json()
    fh.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
