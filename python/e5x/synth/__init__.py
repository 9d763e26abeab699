"""e5x.synth: generate synthetic embedding-task data with any OpenAI-compatible LLM.

``synthesize(config, out_dir)`` runs the two-step recipe (brainstorm task pools, then one
example per request) against the configured endpoint and leaves a *run directory*:

    config.json      the SynthConfig (no secrets: keys are read from the environment)
    plan.json        plan fingerprint and sizes; a resume must reproduce the same plan
    responses.jsonl  append-only log, one answered request per line (see store.py)
    errors.jsonl     every failed attempt (429, 5xx, timeout, ...), for the report
    pools.json       the deduplicated brainstormed task pools
    summary.json     counters of the last session

Interrupt it at any point (even kill -9) and ``synthesize(out_dir=..., resume=True)``
(``e5x synth --resume``) finishes the plan: answered requests are never sent again.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from e5x.synth.config import DEFAULT_PRICES, EndpointConfig, StepConfig, SynthConfig
from e5x.synth.plan import Plan, Request, build_plan, build_pool, example_requests, resolve_types
from e5x.synth.runner import FatalAPIError, Runner, Stats, progress_bar
from e5x.synth.store import AppendLog, RunLock, read_log, write_json_atomic

__all__ = [
    "DEFAULT_PRICES",
    "EndpointConfig",
    "FatalAPIError",
    "Plan",
    "StepConfig",
    "SynthConfig",
    "build_plan",
    "describe_plan",
    "format_plan",
    "synthesize",
]

PLAN_VERSION = 1
RENDER_CHUNK = 20_000  # example prompts rendered (and held in memory) at a time


def _load_config(config: SynthConfig | str | Path | dict[str, Any] | None, out: Path, resume: bool) -> SynthConfig:
    if isinstance(config, SynthConfig):
        return config
    if isinstance(config, dict):
        return SynthConfig.from_dict(config)
    if config is not None:
        return SynthConfig.from_toml(config)
    if resume and (out / "config.json").exists():
        return SynthConfig.from_dict(json.loads((out / "config.json").read_text()), where=str(out / "config.json"))
    if resume:
        raise FileNotFoundError(f"nothing to resume: {out / 'config.json'} does not exist")
    return SynthConfig()


def describe_plan(plan: Plan) -> dict[str, Any]:
    """Requests, expected tokens and cost per step and task type (for --dry-run)."""
    cfg = plan.config
    rows: list[dict[str, Any]] = []

    def add(step: str, name: str, chunks: Iterable[list[Request]], step_cfg: StepConfig) -> None:
        models: Counter[str] = Counter()
        n = pt = ct = 0
        cost = 0.0
        priced = True
        for reqs in chunks:
            for r in reqs:
                c = r.expected_completion_tokens
                if step_cfg.max_tokens:
                    c = min(c, step_cfg.max_tokens)
                models[r.model] += 1
                n += 1
                pt += r.prompt_tokens_est
                ct += c
                p = cfg.price(r.model)
                if p is None:
                    priced = False
                else:
                    cost += (r.prompt_tokens_est * p[0] + c * p[1]) / 1e6
        rows.append(
            {
                "step": step,
                "task_type": name,
                "requests": n,
                "models": dict(models),
                "prompt_tokens": pt,
                "completion_tokens": ct,
                "cost_usd": round(cost, 4) if priced else None,
            }
        )

    by_type: dict[str, list[Request]] = defaultdict(list)
    for r in plan.brainstorm:
        by_type[r.task_type].append(r)
    for name, reqs in by_type.items():
        add("brainstorm", name, [reqs], cfg.brainstorm)
    for name in plan.skeleton:
        # Task text is unknown before the brainstorm: assume a ~25-token definition.
        pool = None if plan.types[name].symmetric else ["x" * 100]
        chunks = (
            example_requests(plan, name, pool, k, RENDER_CHUNK) for k in range(0, plan.counts[name], RENDER_CHUNK)
        )
        add("examples", name, chunks, cfg.examples)
    total = {
        "requests": sum(r["requests"] for r in rows),
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
        "cost_usd": None if any(r["cost_usd"] is None for r in rows) else round(sum(r["cost_usd"] for r in rows), 4),
    }
    return {"rows": rows, "total": total, "fingerprint": plan.fingerprint()}


def format_plan(desc: dict[str, Any]) -> str:
    lines = [f"{'step':<11}{'task type':<13}{'requests':>9}{'prompt tok':>12}{'compl tok':>12}{'cost $':>11}  models"]
    for r in desc["rows"]:
        cost = "n/a" if r["cost_usd"] is None else f"{r['cost_usd']:.4f}"
        models = ", ".join(f"{m}:{n}" for m, n in r["models"].items())
        lines.append(
            f"{r['step']:<11}{r['task_type']:<13}{r['requests']:>9}{r['prompt_tokens']:>12,}"
            f"{r['completion_tokens']:>12,}{cost:>11}  {models}"
        )
    t = desc["total"]
    cost = "n/a (unpriced model)" if t["cost_usd"] is None else f"{t['cost_usd']:.4f}"
    lines.append(f"{'total':<24}{t['requests']:>9}{t['prompt_tokens']:>12,}{t['completion_tokens']:>12,}{cost:>11}")
    lines.append("(expected tokens are estimates: ~4 characters per token, completions at their typical size)")
    return "\n".join(lines)


def synthesize(
    config: SynthConfig | str | Path | dict[str, Any] | None = None,
    out_dir: str | Path = "synth-run",
    *,
    resume: bool = False,
    dry_run: bool = False,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume, or dry-run) a synth plan; returns the summary dict.

    ``config`` may be a SynthConfig, a dict, a TOML path, or None (resume: the run
    directory's config.json; otherwise the defaults). On resume a given config may change
    anything that does not change the plan (endpoint, budget, concurrency, ...).
    """
    say = echo or (lambda s: print(s, file=sys.stderr))
    out = Path(out_dir)
    cfg = _load_config(config, out, resume)
    if cfg.task_types_file:  # config.json must work from any working directory
        cfg.task_types_file = str(Path(cfg.task_types_file).resolve())
    types = resolve_types(cfg)
    plan = build_plan(cfg, types)  # every config error surfaces here, before any request
    if dry_run:
        desc = describe_plan(plan)
        say(format_plan(desc))
        return {"dry_run": True, **desc}

    fingerprint = plan.fingerprint()
    plan_path = out / "plan.json"
    if plan_path.exists():
        if not resume:
            raise FileExistsError(f"{out} already holds a synth run; pass resume=True (--resume) to continue it")
        stored = json.loads(plan_path.read_text())
        if stored.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{out}: the config no longer produces the stored plan (seed, sizes, task types, models, "
                "prompts or language weights changed); start a new run directory instead"
            )
    elif resume:
        raise FileNotFoundError(f"nothing to resume: {plan_path} does not exist")
    if cfg.endpoint.api_key() is None:
        raise FatalAPIError(f"environment variable {cfg.endpoint.key_env} (endpoint.api_key_env) is not set")

    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out)
    try:
        if not plan_path.exists():
            write_json_atomic(out / "config.json", cfg.to_dict())
            write_json_atomic(
                plan_path,
                {
                    "version": PLAN_VERSION,
                    "fingerprint": fingerprint,
                    "seed": cfg.seed,
                    "brainstorm_requests": len(plan.brainstorm),
                    "examples": plan.counts,
                    "created": time.time(),
                },
            )
        return _run_locked(plan, out, say)
    finally:
        lock.release()


def _run_locked(plan: Plan, out: Path, say: Callable[[str], None]) -> dict[str, Any]:
    cfg = plan.config
    log_path, err_path = out / "responses.jsonl", out / "errors.jsonl"
    records, dropped = read_log(log_path, repair=True)
    if dropped:
        say(f"e5x synth: dropped a torn last line ({dropped} bytes) from {log_path}")
    _, err_dropped = read_log(err_path, repair=True)
    n_err_lines = len(read_log(err_path)[0])

    stats = Stats()
    seen: set[str] = set()
    for rec in records:
        if rec.get("id") in seen:  # cannot happen with one locked appender; be safe
            continue
        seen.add(rec["id"])
        stats.add_answer(rec, float(rec.get("cost_usd") or 0.0))
    stats.calls = len(seen) + n_err_lines
    records = [r for r in records if r.get("step") == "brainstorm"]  # the rest is not needed again
    prior = stats.answered

    log = AppendLog(log_path, fsync=cfg.fsync, fsync_interval_s=cfg.fsync_interval_s)
    errlog = AppendLog(err_path, fsync="never")
    runner = Runner(cfg, plan.types, log, errlog, stats)
    t0 = time.monotonic()
    pools_info: dict[str, Any] = {}
    waiting: list[str] = []
    n_examples = plan.n_examples

    async def main() -> None:
        try:
            todo = [r for r in plan.brainstorm if r.id not in seen]
            if plan.brainstorm:
                bar = progress_bar(len(plan.brainstorm), len(plan.brainstorm) - len(todo), "brainstorm", cfg.progress)
                try:
                    await runner.run(todo, cfg.brainstorm, bar)
                finally:
                    bar.close()
            if runner.fatal:
                return
            answered_b: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for rec in [*(r for r in records if r.get("step") == "brainstorm"), *runner.brainstorm_records]:
                answered_b[rec["task_type"]].append(rec)
            planned_b = Counter(r.task_type for r in plan.brainstorm)
            ready: dict[str, list[str] | None] = {}
            pools: dict[str, list[str]] = {}
            for name in plan.skeleton:
                t = plan.types[name]
                if t.symmetric:
                    ready[name] = None
                    continue
                if len(answered_b[name]) < planned_b[name]:
                    waiting.append(name)  # pool must be complete so resumes render the same prompts
                    continue
                pool, pstats = build_pool(answered_b[name])
                pools[name] = pool
                pools_info[name] = {"size": len(pool), **pstats}
                if not pool:
                    say(f"e5x synth: task type {name!r}: brainstorm gave no usable task; its examples are skipped")
                    waiting.append(name)
                    continue
                ready[name] = pool
            if pools:
                write_json_atomic(out / "pools.json", {"pools": pools, "stats": pools_info})
            if runner.stop_reason is None and n_examples:
                done = sum(i in seen for i in plan.example_ids())
                bar = progress_bar(n_examples, done, "examples", cfg.progress)
                try:
                    for name, pool in ready.items():
                        for start in range(0, plan.counts[name], RENDER_CHUNK):
                            chunk = example_requests(plan, name, pool, start, RENDER_CHUNK)
                            todo2 = [r for r in chunk if r.id not in seen]
                            if todo2 and runner.stop_reason is None:
                                await runner.run(todo2, cfg.examples, bar)
                finally:
                    bar.close()
        finally:
            await runner.aclose()

    try:
        asyncio.run(main())
    finally:
        log.close()
        errlog.close()
    elapsed = time.monotonic() - t0

    answered_ids = seen | runner.answered_ids
    b_done = sum(r.id in answered_ids for r in plan.brainstorm)
    e_done = sum(i in answered_ids for i in plan.example_ids())
    complete = b_done == len(plan.brainstorm) and e_done == n_examples
    summary = {
        "run_dir": str(out),
        "complete": complete,
        "stop_reason": runner.stop_reason,
        "fatal": runner.fatal,
        "brainstorm": {"planned": len(plan.brainstorm), "answered": b_done},
        "examples": {"planned": n_examples, "answered": e_done, "by_type": plan.counts},
        "waiting_for_brainstorm": waiting,
        "answered_before": prior,
        "answered_this_session": stats.answered_now,
        "api_calls_total": stats.calls,
        "errors_this_session": dict(stats.errors),
        "failed_this_session": dict(stats.failed),
        "finish_reasons": dict(stats.finish),
        "refusals": stats.refusals,
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "cost_usd": round(stats.cost_usd, 6),
        "elapsed_s": round(elapsed, 3),
        "requests_per_s": round(stats.answered_now / elapsed, 2) if elapsed > 0 else None,
        "mean_latency_s": round(stats.latency_sum / stats.answered_now, 4) if stats.answered_now else None,
        "pools": pools_info,
    }
    write_json_atomic(out / "summary.json", summary)
    say(format_summary(summary))
    if runner.fatal:
        raise FatalAPIError(runner.fatal)
    return summary


def format_summary(s: dict[str, Any]) -> str:
    state = "complete" if s["complete"] else f"INCOMPLETE ({s['stop_reason'] or 'some requests failed; rerun with --resume'})"
    lines = [
        f"e5x synth: {state}",
        f"  brainstorm {s['brainstorm']['answered']}/{s['brainstorm']['planned']}, "
        f"examples {s['examples']['answered']}/{s['examples']['planned']} answered "
        f"({s['answered_this_session']} this session, {s['requests_per_s']} req/s)",
        f"  tokens {s['prompt_tokens']:,} prompt + {s['completion_tokens']:,} completion, cost ${s['cost_usd']:.4f}, "
        f"API calls {s['api_calls_total']}",
        f"  finish reasons {s['finish_reasons']}, refusals {s['refusals']}",
    ]
    if s["errors_this_session"]:
        lines.append(f"  retried errors {s['errors_this_session']}")
    if s["failed_this_session"]:
        lines.append(f"  gave up (will retry on --resume) {s['failed_this_session']}")
    if s["waiting_for_brainstorm"]:
        lines.append(f"  examples waiting for a complete task pool: {s['waiting_for_brainstorm']}")
    lines.append(f"  run directory {s['run_dir']}")
    return "\n".join(lines)
