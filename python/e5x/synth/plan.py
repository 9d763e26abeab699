"""The plan of a synth run: every request, derived deterministically from the seed.

Step 1 (brainstorm) is fully rendered up front. Step 2 (examples) is fixed up front except
for the task text: each example carries its model, its placeholder draws and a uniform
number ``task_u`` that picks its task from the (deterministically ordered) brainstormed
pool, so once the pool is known the prompts follow without any further randomness.
Seeds for every draw are derived from (seed, purpose, task type) with BLAKE2b, so adding
a task type does not reshuffle the others.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from e5x.config import load
from e5x.formats.response_log import content_text
from e5x.synth.config import StepConfig, SynthConfig
from e5x.tasks.languages import default_language_weights, resolve_language_weights
from e5x.tasks.taxonomy import TaskType, task_types

STEPS = ("brainstorm", "examples")
MAX_TASK_CHARS = 500


def _core() -> Any:
    from e5x import core

    return core


def derive_seed(seed: int, *parts: object) -> int:
    key = "/".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)


def estimate_tokens(text: str) -> int:
    """~4 characters per token: good enough for budgets and rate limits, no tokenizer."""
    return len(text) // 4 + 1


@dataclass
class Request:
    id: str
    step: str
    task_type: str
    model: str
    messages: list[dict[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)
    expected_completion_tokens: int = 0

    @property
    def prompt_tokens_est(self) -> int:
        return sum(estimate_tokens(m["content"]) for m in self.messages) + 4 * len(self.messages)


@dataclass
class Plan:
    config: SynthConfig
    types: dict[str, TaskType]
    counts: dict[str, int]  # examples per task type
    brainstorm: list[Request]
    skeleton: dict[str, pl.DataFrame]  # task type -> id, model, task_u, placeholder columns

    @property
    def n_examples(self) -> int:
        return sum(self.counts.values())

    def fingerprint(self) -> str:
        """Hash of every planned request's identity and prompt-determining inputs."""
        h = hashlib.sha256()
        for r in self.brainstorm:
            h.update(json.dumps([r.id, r.model, r.messages], ensure_ascii=False).encode())
        for name in sorted(self.skeleton):
            t = self.types[name]
            h.update(json.dumps([name, t.prompt, t.task], ensure_ascii=False).encode())
            h.update(self.skeleton[name].write_csv().encode())
        return h.hexdigest()

    def example_ids(self) -> list[str]:
        return [i for df in self.skeleton.values() for i in df["id"].to_list()]


def allocate(n: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split n proportionally to weights, exactly (largest remainder, ties by order)."""
    total = sum(weights.values())
    raw = {k: n * w / total for k, w in weights.items()}
    out = {k: math.floor(v) for k, v in raw.items()}
    rest = n - sum(out.values())
    order = sorted(raw, key=lambda k: (-(raw[k] - out[k]), list(weights).index(k)))
    for k in order[:rest]:
        out[k] += 1
    return out


def resolve_types(cfg: SynthConfig) -> dict[str, TaskType]:
    from e5x.tasks.taxonomy import load_task_types

    extra = load_task_types(cfg.task_types_file) if cfg.task_types_file else None
    types = task_types(extra)
    unknown = [t for t in cfg.task_weights if t not in types]
    if unknown:
        raise ValueError(f"unknown task type(s) {unknown} in task_weights; known: {sorted(types)}")
    if cfg.brainstorm_requests:
        bad = [t for t in cfg.brainstorm_requests if t not in types or types[t].symmetric]
        if bad:
            raise ValueError(f"brainstorm_requests names {bad}, which are not asymmetric task types")
    return types


def _sample(placeholders: Mapping[str, Any], n: int, seed: int) -> pl.DataFrame:
    if not placeholders:
        return pl.DataFrame({"__row": range(n)}).drop("__row")
    return _core().sample_placeholders(dict(placeholders), n, seed)


def _models(step: StepConfig, n: int, seed: int) -> list[str]:
    models = {m: float(w) for m, w in step.models.items() if w > 0}
    return _sample({"model": models}, n, seed)["model"].to_list()


def _distinct_languages(df: pl.DataFrame, a: str, b: str, weights: dict[str, float], seed: int) -> pl.DataFrame:
    """Bitext needs two different languages: redraw ``b`` where it equals ``a``."""
    if len(weights) < 2:
        raise ValueError(f"{a}/{b} need at least two languages with positive weight")
    col = df[b].to_list()
    src = df[a].to_list()
    for k in range(16):
        same = [i for i in range(len(col)) if col[i] == src[i]]
        if not same:
            break
        redraw = _sample({b: weights}, len(same), derive_seed(seed, "redraw", k))[b].to_list()
        for i, v in zip(same, redraw):
            col[i] = v
    fallback = [lang for lang in weights if weights[lang] > 0]
    col = [v if v != s else next(x for x in fallback if x != s) for v, s in zip(col, src)]
    return df.with_columns(pl.Series(b, col))


def build_plan(cfg: SynthConfig, types: dict[str, TaskType] | None = None) -> Plan:
    """The whole plan; raises ValueError on any config problem before a request is made."""
    cfg = load(SynthConfig, cfg)
    types = types if types is not None else resolve_types(cfg)
    languages = resolve_language_weights(cfg.language_weights or default_language_weights())
    languages = {k: v for k, v in languages.items() if v > 0}
    weights = {t: float(w) for t, w in cfg.task_weights.items() if w > 0}
    counts = allocate(cfg.n_examples, weights)
    seed = cfg.seed

    brainstorm: list[Request] = []
    skeleton: dict[str, pl.DataFrame] = {}
    for name, n in counts.items():
        t = types[name]
        if n == 0:
            continue
        resolved = t.placeholder_values(languages)
        # Step 1: brainstorm requests (asymmetric types only).
        if not t.symmetric:
            assert t.brainstorm_prompt is not None
            nb = (cfg.brainstorm_requests or {}).get(name)
            if nb is None:
                nb = max(1, math.ceil(n / (cfg.tasks_per_brainstorm * cfg.examples_per_task)))
            bvals = _sample(
                {k: resolved[k] for k in t.brainstorm_placeholders()}, nb, derive_seed(seed, "brainstorm", name)
            ).with_columns(pl.lit(str(cfg.tasks_per_brainstorm)).alias("n_tasks"))
            prompts = _core().render(t.brainstorm_prompt, bvals).to_list()
            models = _models(cfg.brainstorm, nb, derive_seed(seed, "brainstorm-model", name))
            rows = bvals.to_dicts()
            for i in range(nb):
                brainstorm.append(
                    Request(
                        id=f"brainstorm-{name}-{i:06d}",
                        step="brainstorm",
                        task_type=name,
                        model=models[i],
                        messages=_messages(cfg.brainstorm, prompts[i]),
                        meta={"placeholders": rows[i]},
                        expected_completion_tokens=cfg.tasks_per_brainstorm * 25,
                    )
                )
        # Step 2 skeleton: everything but the task text.
        vals = _sample(resolved, n, derive_seed(seed, "placeholders", name))
        if t.language_from and len(t.language_from) == 2 and all(resolved[k] == languages for k in t.language_from):
            vals = _distinct_languages(vals, *t.language_from, languages, derive_seed(seed, "bitext", name))
        task_u = np.random.default_rng(derive_seed(seed, "task", name)).random(n)
        skeleton[name] = pl.DataFrame(
            {
                "id": [f"examples-{name}-{i:06d}" for i in range(n)],
                "model": _models(cfg.examples, n, derive_seed(seed, "examples-model", name)),
                "task_u": task_u,
            }
        ).hstack(vals)
    return Plan(cfg, types, {k: v for k, v in counts.items() if v > 0}, brainstorm, skeleton)


def _messages(step: StepConfig, prompt: str) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": step.system_prompt}] if step.system_prompt else []
    return [*msgs, {"role": "user", "content": prompt}]


# ---- step 1 -> step 2 ------------------------------------------------------------------

_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*\n?(.*?)\n?```\s*$", re.S)


def parse_task_list(content: Any) -> list[str] | None:
    """Task definitions from a brainstorm answer: {"tasks": [...]} or a bare list.
    ``content`` is whatever the log holds (a string, a list of parts, anything)."""
    content = content_text(content)
    if not content:
        return None
    m = _FENCE.match(content)
    text = m.group(1) if m else content
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        start, end = text.find("["), text.rfind("]")
        if start < 0 or end <= start:
            return None
        try:
            obj = json.loads(text[start : end + 1])
        except (ValueError, RecursionError):
            return None
    if isinstance(obj, dict):
        obj = obj.get("tasks")
    if not isinstance(obj, list):
        return None
    return [" ".join(x.split()) for x in obj if isinstance(x, str)]


def build_pool(records: Iterable[dict[str, Any]]) -> tuple[list[str], dict[str, int]]:
    """The deduplicated task pool of one task type, in request-id order; and its stats."""
    tasks: list[str] = []
    stats = {"responses": 0, "unparseable": 0, "tasks": 0, "too_long_or_empty": 0, "not_a_task": 0, "duplicates": 0}
    for rec in sorted(records, key=lambda r: r["id"]):
        stats["responses"] += 1
        got = parse_task_list(rec.get("content"))
        if got is None:
            stats["unparseable"] += 1
            continue
        for task in got:
            if not task or len(task) > MAX_TASK_CHARS:
                stats["too_long_or_empty"] += 1
            else:
                tasks.append(task)
    # Not instructions (one snake_case word, a fragment): never ask for examples of them.
    # The same check as e5x clean's not_a_task.
    problems = _core().task_problems(tasks)
    stats["not_a_task"] = sum(p is not None for p in problems)
    tasks = [t for t, p in zip(tasks, problems) if p is None]
    stats["tasks"] = len(tasks)
    if not tasks:
        return [], stats
    keep = _core().Deduplicator(casefold=True).add(pl.DataFrame({"task": tasks}), ["task"])["keep"].to_list()
    pool = [t for t, k in zip(tasks, keep) if k]
    stats["duplicates"] = len(tasks) - len(pool)
    return pool, stats


def example_requests(
    plan: Plan, name: str, pool: list[str] | None, start: int = 0, length: int | None = None
) -> list[Request]:
    """Render step-2 requests of one task type (rows ``start:start+length``), given its
    pool (None for symmetric types). Rows are independent, so any slicing renders the
    same prompts; the synth loop renders in chunks to keep memory flat at 500k examples."""
    t = plan.types[name]
    df = plan.skeleton[name].slice(start, length)
    if t.symmetric:
        tasks = [t.task] * df.height
    else:
        if not pool:
            raise ValueError(f"task type {name!r}: the brainstormed task pool is empty")
        idx = np.minimum((df["task_u"].to_numpy() * len(pool)).astype(np.int64), len(pool) - 1)
        tasks = [pool[i] for i in idx]
    values = df.drop("id", "model", "task_u").with_columns(pl.Series("task", tasks, dtype=pl.Utf8))
    prompts = _core().render(t.prompt, values).to_list()
    placeholder_rows = df.drop("id", "model", "task_u").to_dicts()
    ids, models = df["id"].to_list(), df["model"].to_list()
    out = []
    for i in range(df.height):
        ph = placeholder_rows[i]
        out.append(
            Request(
                id=ids[i],
                step="examples",
                task_type=name,
                model=models[i],
                messages=_messages(plan.config.examples, prompts[i]),
                meta={
                    "task": tasks[i],
                    "language": "-".join(ph[k] for k in t.language_from) if t.language_from else None,
                    "placeholders": ph,
                },
                expected_completion_tokens=t.expected_completion_tokens,
            )
        )
    return out
