"""``e5x demo``: the Rust data core on a small generated E5-style sample, in memory.

Draws the short_long task type's placeholders and renders its generation prompt, fabricates LLM-style responses
(most valid, some broken, some duplicated, some wrapped in a ```json fence), then
validates and deduplicates them and prints a short summary table. Seconds, no network.
"""

from __future__ import annotations

import argparse
import json
import time

# The task every demo prompt is rendered for (synth brainstorms these).
DEMO_TASK = "Given a question about a medication, retrieve patient information leaflets that answer it."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=20_000, help="responses to generate")
    parser.add_argument("--seed", type=int, default=0)


def _responses(prompts: list[str], langs: list[str], seed: int) -> list[str]:
    """Fake LLM answers for the prompts: valid JSON mostly, with the usual failures."""
    import random

    rnd = random.Random(seed)
    out: list[str] = []
    for i, (prompt, lang) in enumerate(zip(prompts, langs)):
        obj = {
            "user_query": f"{lang} query {i % 9000}",
            "positive_document": f"A {lang} passage that answers query {i % 9000}. " + prompt[:60],
            "hard_negative_document": f"A {lang} passage on a nearby topic {i % 7}.",
        }
        text = json.dumps(obj, ensure_ascii=False, indent=rnd.choice([None, 2]))
        r = rnd.random()
        if r < 0.02:
            text = text[: len(text) // 2]  # truncated generation
        elif r < 0.04:
            text = text.replace('"user_query"', '"query"')  # ignored the schema
        elif r < 0.06:
            text = f"Sure! Here is the example:\n```json\n{text}\n```"  # needs extract
        elif r < 0.07:
            text = text.replace(f"{lang} query {i % 9000}", "")  # empty field
        out.append(text)
    return out


def run(args: argparse.Namespace) -> int:
    import polars as pl

    from e5x import core

    from e5x.tasks.languages import default_language_weights
    from e5x.tasks.taxonomy import task_types

    # The recipe's own short_long type: its placeholders, weights and generation prompt.
    short_long = task_types()["short_long"]
    placeholders = short_long.placeholder_values(default_language_weights())
    t0 = time.perf_counter()
    ph = core.sample_placeholders(placeholders, args.rows, args.seed)
    prompts = core.render(short_long.prompt, ph.with_columns(task=pl.lit(DEMO_TASK)))
    t_sample = time.perf_counter() - t0

    texts = pl.Series("response", _responses(prompts.to_list(), ph["language"].to_list(), args.seed))
    t1 = time.perf_counter()
    verdicts = core.validate(texts, "short_long", extract=True, unpack=True)
    t_validate = time.perf_counter() - t1
    ok = verdicts.filter(pl.col("ok"))
    t2 = time.perf_counter()
    dedup = core.Deduplicator()
    kept = dedup.add(ok, ["user_query", "positive_document"])
    t_dedup = time.perf_counter() - t2

    mb = int(texts.str.len_bytes().sum()) / 1e6
    reasons = verdicts.filter(~pl.col("ok")).group_by("reason").len().sort("len", descending=True)
    print(f"e5x demo: {args.rows:,} generated responses ({mb:.1f} MB), seed {args.seed}\n")
    print(f"{'step':34} {'rows':>9} {'seconds':>8}")
    print(f"{'sample placeholders + render':34} {prompts.len():>9,} {t_sample:>8.3f}")
    print(f"{'validate (schema short_long)':34} {verdicts.height:>9,} {t_validate:>8.3f}")
    print(f"{'  valid':34} {ok.height:>9,}")
    print(f"{'    of which extracted from prose':34} {int(ok['extracted'].sum()):>9,}")
    for reason, n in reasons.iter_rows():
        print(f"{'  rejected: ' + reason:34} {n:>9,}")
    print(f"{'dedup (query + positive)':34} {ok.height:>9,} {t_dedup:>8.3f}")
    print(f"{'  kept':34} {int(kept['keep'].sum()):>9,}")
    print(f"{'  duplicates dropped':34} {int((~kept['keep']).sum()):>9,}")
    print(f"\nfirst prompt: {prompts[0]}")
    return 0
