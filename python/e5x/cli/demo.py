"""``e5x demo``: the Rust data core on a small generated E5-style sample, in memory.

Draws placeholders and renders generation prompts, fabricates LLM-style responses
(most valid, some broken, some duplicated, some wrapped in a ```json fence), then
validates and deduplicates them and prints a short summary table. Seconds, no network.
"""

from __future__ import annotations

import argparse
import json
import time

TEMPLATE = (
    "Brainstorm one {query_type} retrieval example in {language}; the query is "
    "{query_length} and {clarity}, documents need {difficulty} education and about "
    "{num_words} words. Answer with a JSON object only."
)
# name -> values drawn uniformly, or value -> weight (e5x.core.sample_placeholders)
PLACEHOLDERS: dict[str, list[str] | dict[str, float]] = {
    "query_type": ["extremely long-tail", "long-tail", "common"],
    "query_length": ["less than 5 words", "5 to 15 words", "at least 10 words"],
    "clarity": ["clear", "understandable with some effort", "ambiguous"],
    "num_words": ["50", "100", "200", "300", "400", "500"],
    "difficulty": ["high school", "college", "PhD"],
    "language": {"English": 43.0, "German": 3.0, "Japanese": 3.0, "French": 3.0, "Swahili": 1.0},
}


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

    t0 = time.perf_counter()
    ph = core.sample_placeholders(PLACEHOLDERS, args.rows, args.seed)
    prompts = core.render(TEMPLATE, ph)
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
