"""e5x.synth: generate synthetic embedding-task data with any OpenAI-compatible LLM.

``synthesize(config, out_dir)`` runs the two-step recipe (brainstorm task pools, then one
example per request) against the configured endpoint and leaves a *run directory*:

    config.json      the SynthConfig (no secrets: keys are read from the environment)
    plan.json        plan fingerprint and sizes; a resume must reproduce the same plan
    responses.jsonl  append-only log, one answered request per line (see store.py)
    errors.jsonl     every failed attempt (429, 5xx, timeout, ...), for the report
    calls.jsonl      one reservation per API call, written before it is sent (budgets)
    pools.json       the deduplicated brainstormed task pools
    summary.json     counters of the last session

Interrupt it at any point (even kill -9) and ``synthesize(out_dir=..., resume=True)``
(``e5x synth --resume``) finishes the plan: answered requests are never sent again.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypedDict, overload

from e5x._extras import require
from e5x.config import load
from e5x.formats.jsonfile import write_json_atomic
from e5x.formats.response_log import AppendLog, read_log
from e5x.synth.client import FatalAPIError
from e5x.synth.config import DEFAULT_PRICES, EndpointConfig, StepConfig, SynthConfig
from e5x.synth.plan import Plan, Request, build_plan, build_pool, example_requests, resolve_types
from e5x.synth.response import token_count
from e5x.synth.runner import Runner, Stats, progress_bar
from e5x.synth.store import RunLock

__all__ = [
    "DEFAULT_PRICES",
    "EndpointConfig",
    "FatalAPIError",
    "Plan",
    "RunDirError",
    "DryRunReport",
    "StepConfig",
    "SynthConfig",
    "SynthSummary",
    "build_plan",
    "describe_plan",
    "format_plan",
    "load_config",
    "synthesize",
]

PLAN_VERSION = 1
RUN_FILES = ("config.json", "plan.json", "responses.jsonl", "errors.jsonl", "calls.jsonl", "pools.json", "summary.json")


class PlanRow(TypedDict):
    """One step and task type of a plan: requests and expected tokens and cost."""

    step: str  # "brainstorm" or "examples"
    task_type: str
    requests: int
    models: dict[str, int]  # model -> requests
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None  # None: a model without a price


class PlanTotals(TypedDict):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None


class PlanDescription(TypedDict):
    """What ``describe_plan`` returns."""

    rows: list[PlanRow]
    total: PlanTotals
    fingerprint: str


class DryRunReport(PlanDescription):
    """What ``synthesize(..., dry_run=True)`` returns: the plan, nothing sent."""

    dry_run: Literal[True]


class BrainstormProgress(TypedDict):
    planned: int
    answered: int
    retries_answered: int  # extra requests of types whose answers gave no usable task


class ExamplesProgress(TypedDict):
    planned: int
    answered: int
    by_type: dict[str, int]  # planned examples per task type


class ExhaustedType(TypedDict):
    answers: int  # brainstorm answers, none of which gave a usable task
    retries: int  # brainstorm_retries, all spent


class BudgetCalls(TypedDict):
    sent: int  # every call reserved before sending, all sessions
    stored: int  # answers stored
    lost_in_flight: int  # calls a kill left without an outcome


class BudgetTokens(TypedDict):
    billed: int  # the server's usage of stored answers
    reserved: int  # worst case of the calls lost in flight


class BudgetCost(TypedDict):
    billed: float
    reserved: float


class Budget(TypedDict):
    """What the caps count: billed + reserved."""

    calls: BudgetCalls
    tokens: BudgetTokens
    cost_usd: BudgetCost


class RetryAfterStats(TypedDict):
    received: int
    max_s: float | None  # longest wait asked for
    capped: int  # waits cut to cap_s
    cap_s: float


class SynthSummary(TypedDict):
    """What ``synthesize`` returns after a run, and writes to summary.json.

    Counters named ``*_this_session`` cover this session only; the others cover the
    run directory (every session)."""

    run_dir: str
    complete: bool  # every planned request answered
    stop_reason: str | None  # a budget cap or a fatal error stopped the run
    fatal: str | None
    brainstorm: BrainstormProgress
    examples: ExamplesProgress
    waiting_for_brainstorm: list[str]  # task types whose examples wait for a complete pool
    brainstorm_exhausted: dict[str, ExhaustedType]
    answered_before: int
    answered_this_session: int
    api_calls_total: int
    budget: Budget
    errors_this_session: dict[str, int]  # failed attempts by kind
    failed_this_session: dict[str, int]  # requests given up, by last error kind
    retry_after: RetryAfterStats
    finish_reasons: dict[str, int]
    refusals: int
    rejected_answers: dict[str, int]  # stored but unusable answers, by reason
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    elapsed_s: float
    requests_per_s: float | None
    mean_latency_s: float | None
    pools: dict[str, dict[str, int]]  # task type -> pool size and build_pool's counters


class RunDirError(ValueError):
    """The run directory cannot be used (a file in the way, no permission, read-only)."""


def read_run_json(path: Path) -> dict[str, Any]:
    """A JSON object from the run directory; an error names the file."""
    try:
        obj = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); restore it or start a new run directory") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


RENDER_CHUNK = 20_000  # example prompts rendered (and held in memory) at a time


def load_config(config: SynthConfig | str | Path | Mapping[str, Any] | None,
                overrides: Iterable[str] | Mapping[str, Any], out: Path, resume: bool) -> SynthConfig:  # fmt: skip
    """The config a run uses: ``config`` with ``overrides``, or on a resume without one the
    run directory's config.json with them."""
    if config is None and resume:  # the run's own config, with the overrides given now
        snapshot = out / "config.json"
        if not snapshot.exists():
            raise FileNotFoundError(f"nothing to resume: {snapshot} does not exist")
        return load(SynthConfig, read_run_json(snapshot), overrides, where=str(snapshot))
    return load(SynthConfig, config, overrides)


def describe_plan(plan: Plan) -> PlanDescription:
    """Requests, expected tokens and cost per step and task type (for --dry-run)."""
    cfg = plan.config
    rows: list[PlanRow] = []

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
    total: PlanTotals = {
        "requests": sum(r["requests"] for r in rows),
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
        "cost_usd": None
        if any(r["cost_usd"] is None for r in rows)
        else round(sum(r["cost_usd"] or 0.0 for r in rows), 4),
    }
    return {"rows": rows, "total": total, "fingerprint": plan.fingerprint()}


def format_plan(desc: PlanDescription) -> str:
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


ConfigInput = SynthConfig | str | Path | Mapping[str, Any] | None


@overload
def synthesize(
    config: ConfigInput = None,
    out_dir: str | Path = "synth-run",
    *,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    resume: bool = False,
    dry_run: Literal[False] = False,
    echo: Callable[[str], None] | None = None,
) -> SynthSummary: ...
@overload
def synthesize(
    config: ConfigInput = None,
    out_dir: str | Path = "synth-run",
    *,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    resume: bool = False,
    dry_run: Literal[True],
    echo: Callable[[str], None] | None = None,
) -> DryRunReport: ...
@overload
def synthesize(
    config: ConfigInput = None,
    out_dir: str | Path = "synth-run",
    *,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    resume: bool = False,
    dry_run: bool = False,
    echo: Callable[[str], None] | None = None,
) -> SynthSummary | DryRunReport: ...
def synthesize(
    config: ConfigInput = None,
    out_dir: str | Path = "synth-run",
    *,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    resume: bool = False,
    dry_run: bool = False,
    echo: Callable[[str], None] | None = None,
) -> SynthSummary | DryRunReport:
    """Run (or resume, or dry-run) a synth plan; returns its SynthSummary (also written to
    summary.json), or with ``dry_run`` the plan as a DryRunReport.

    ``config`` may be a SynthConfig, a dict, a TOML path, or None (resume: the run
    directory's config.json; otherwise the defaults); ``overrides`` (``"key.sub=value"``)
    apply on top. On resume a given config may change anything that does not change the
    plan (endpoint, budget, concurrency, ...).
    """
    say = echo or (lambda s: print(s, file=sys.stderr))
    out = Path(out_dir)
    # Every field is validated before anything else: task_weights="sts" must not become ["s", "t", "s"].
    cfg = load_config(config, overrides, out, resume)
    if cfg.task_types_file:  # config.json must work from any working directory
        cfg.task_types_file = str(Path(cfg.task_types_file).resolve())
    types = resolve_types(cfg)
    plan = build_plan(cfg, types)  # every config error surfaces here, before any request
    if dry_run:
        desc = describe_plan(plan)
        say(format_plan(desc))
        report: DryRunReport = {"dry_run": True, **desc}
        return report
    require("synthesis", "synth")

    fingerprint = plan.fingerprint()
    plan_path = out / "plan.json"
    if plan_path.exists():
        if not resume:
            raise FileExistsError(f"{out} already holds a synth run; pass resume=True (--resume) to continue it")
        stored = read_run_json(plan_path)
        if stored.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{out}: the config no longer produces the stored plan (seed, sizes, task types, models, "
                "prompts or language weights changed); start a new run directory instead"
            )
    elif resume:
        raise FileNotFoundError(f"nothing to resume: {plan_path} does not exist")
    if cfg.endpoint.api_key() is None:
        raise FatalAPIError(f"environment variable {cfg.endpoint.key_env} (endpoint.api_key_env) is not set")

    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = RunLock(out)
    except OSError as e:  # a file in the way, no permission, read-only file system
        raise RunDirError(f"cannot use {out} as the run directory: {e.strerror or e}") from None
    try:
        for name in RUN_FILES:
            f = out / name
            if (f.exists() or f.is_symlink()) and not f.is_file():
                raise RunDirError(f"cannot use {out} as the run directory: {f} is not a regular file")
        if not plan_path.exists():
            try:
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
            except OSError as e:
                raise RunDirError(f"cannot write to the run directory {out}: {e.strerror or e}") from None
        return _run_locked(plan, out, say)
    finally:
        lock.release()


def _num(v: Any) -> float:
    """A cost from the log as a float; anything else (hand edits, old versions) counts 0."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else 0.0


def _load_state(out: Path, say: Callable[[str], None]) -> tuple[Stats, set[str], list[dict[str, Any]]]:
    """Counters, answered ids and brainstorm answers of a run directory, from its logs.

    Any record a log can hold is accepted: one without a string ``id`` is skipped with a
    warning, odd usage or cost values count as 0. Reservations in calls.jsonl that no
    answer or error settles were in flight at a kill; they count at their worst case.
    """
    records, dropped = read_log(out / "responses.jsonl", repair=True)
    if dropped:
        say(f"e5x synth: dropped a torn last line ({dropped} bytes) from {out / 'responses.jsonl'}")
    errors, _ = read_log(out / "errors.jsonl", repair=True)
    reservations, _ = read_log(out / "calls.jsonl", repair=True)

    stats = Stats()
    seen: set[str] = set()
    settled: set[str] = set()
    legacy = 0  # outcomes written before calls.jsonl existed: one call each
    unreadable = 0
    brainstorm: list[dict[str, Any]] = []
    for rec in records:
        call, rid = rec.get("call"), rec.get("id")
        if isinstance(call, str):
            settled.add(call)
        else:
            legacy += 1
        if not isinstance(rid, str):
            unreadable += 1
            continue
        if rid in seen:  # cannot happen with one locked appender; be safe
            continue
        seen.add(rid)
        stats.add_answer(rec, _num(rec.get("cost_usd")))
        if rec.get("step") == "brainstorm" and isinstance(rec.get("task_type"), str):
            brainstorm.append(rec)
    if unreadable:
        say(f"e5x synth: {out / 'responses.jsonl'}: skipped {unreadable} record(s) without a string id")
    for e in errors:
        if isinstance(e.get("call"), str):
            settled.add(e["call"])
        else:
            legacy += 1
    reserved: set[str] = set()
    for r in reservations:
        if not isinstance(r.get("call"), str) or r["call"] in reserved:
            continue
        reserved.add(r["call"])
        if r["call"] not in settled:
            stats.lost_calls += 1
            stats.lost_tokens += token_count(r.get("tokens")) or 0
            stats.lost_cost_usd += _num(r.get("cost_usd"))
    # A settled call counts even when its reservation line is gone (calls.jsonl edited away).
    stats.calls = len(reserved | settled) + legacy
    return stats, seen, brainstorm


def brainstorm_retry(plan: Plan, name: str, k: int) -> Request:
    """The ``k``-th extra brainstorm request of ``name``: the prompt of its planned request
    ``k mod n`` asked again (sampling differs), under the next free id."""
    planned = [r for r in plan.brainstorm if r.task_type == name]
    base = planned[k % len(planned)]
    return Request(
        id=f"brainstorm-{name}-{len(planned) + k:06d}",
        step="brainstorm",
        task_type=name,
        model=base.model,
        messages=base.messages,
        meta={**base.meta, "retry_of": base.id},
        expected_completion_tokens=base.expected_completion_tokens,
    )


class _Session:
    """One session of a run: brainstorm -> task pools -> examples, over one Runner.

    ``seen`` and ``records`` are the answered ids and brainstorm answers of earlier
    sessions; what this session adds is the runner's."""

    def __init__(self, plan: Plan, out: Path, runner: Runner, seen: set[str], records: list[dict[str, Any]],
                 say: Callable[[str], None]) -> None:  # fmt: skip
        self.plan, self.cfg, self.out, self.runner, self.say = plan, plan.config, out, runner, say
        self.seen = seen
        self.records = records
        self.pools_info: dict[str, dict[str, int]] = {}
        self.waiting: list[str] = []  # task types whose examples wait for a complete pool
        self.exhausted: dict[str, int] = {}  # task type -> unusable brainstorm answers, retries spent
        self._planned_brainstorm = {r.id for r in plan.brainstorm}

    async def run(self) -> None:
        try:
            await self.brainstorm()
            if self.runner.fatal:
                return
            ready = await self.pools()
            if self.runner.fatal:
                return
            if self.runner.stop_reason is None and self.plan.n_examples:
                await self.examples(ready)
        finally:
            await self.runner.aclose()

    async def brainstorm(self) -> None:
        """Step 1: the planned brainstorm requests not answered yet."""
        planned = self.plan.brainstorm
        if not planned:
            return
        todo = [r for r in planned if r.id not in self.seen]
        bar = progress_bar(len(planned), len(planned) - len(todo), "brainstorm", self.cfg.progress)
        try:
            await self.runner.run(todo, self.cfg.brainstorm, bar)
        finally:
            bar.close()

    async def pools(self) -> dict[str, list[str] | None]:
        """The task types whose examples can be asked for, with their task pool (None for
        symmetric types, which need none); written to pools.json. A type whose brainstorm
        is incomplete or gives no usable task waits."""
        plan = self.plan
        answers: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rec in [*self.records, *self.runner.brainstorm_records]:
            answers[rec["task_type"]].append(rec)
        answered_ids = self.seen | self.runner.answered_ids
        ready: dict[str, list[str] | None] = {}
        asym: list[str] = []
        for name in plan.skeleton:
            if plan.types[name].symmetric:
                ready[name] = None
            elif any(r.task_type == name and r.id not in answered_ids for r in plan.brainstorm):
                self.waiting.append(name)  # pool must be complete so resumes render the same prompts
            else:
                asym.append(name)
        filled = await asyncio.gather(*(self.fill_pool(name, answers[name]) for name in asym))
        pools: dict[str, list[str]] = {}
        for name, pool in zip(asym, filled):
            if pool is None:
                self.waiting.append(name)
            else:
                ready[name] = pools[name] = pool
        if pools and not self.runner.fatal:
            write_json_atomic(self.out / "pools.json", {"pools": pools, "stats": self.pools_info})
        return ready

    async def fill_pool(self, name: str, answers: list[dict[str, Any]]) -> list[str] | None:
        """The type's pool; while it is empty, ask again, up to ``brainstorm_retries``
        extra requests. None when it stays empty (the type then waits)."""
        cfg, runner = self.cfg, self.runner
        while True:
            pool, pstats = build_pool(answers)
            self.pools_info[name] = {"size": len(pool), **pstats}
            if pool:
                return pool
            retries = sum(r["id"] not in self._planned_brainstorm for r in answers)
            if retries >= cfg.brainstorm_retries:
                self.exhausted[name] = len(answers)
                self.say(
                    f"e5x synth: task type {name!r}: none of its {len(answers)} brainstorm answers gives a "
                    f"usable task and its brainstorm_retries={cfg.brainstorm_retries} are spent; its examples wait"
                )
                return None
            if runner.stop_reason is not None:
                return None
            req = brainstorm_retry(self.plan, name, retries)
            self.say(f"e5x synth: task type {name!r}: no usable task in {len(answers)} brainstorm answer(s); "
                     f"asking again ({req.id})")  # fmt: skip
            await runner.run([req], cfg.brainstorm)
            got = [r for r in runner.brainstorm_records if r["id"] == req.id]
            if not got:  # failed or stopped: a resume asks again under the same id
                return None
            answers = [*answers, *got]

    async def examples(self, ready: dict[str, list[str] | None]) -> None:
        """Step 2: the examples of the ready types not answered yet, rendered a chunk at a time."""
        plan, runner = self.plan, self.runner
        done = sum(i in self.seen for i in plan.example_ids())
        bar = progress_bar(plan.n_examples, done, "examples", self.cfg.progress)
        try:
            for name, pool in ready.items():
                for start in range(0, plan.counts[name], RENDER_CHUNK):
                    chunk = example_requests(plan, name, pool, start, RENDER_CHUNK)
                    todo = [r for r in chunk if r.id not in self.seen]
                    if todo and runner.stop_reason is None:
                        await runner.run(todo, self.cfg.examples, bar)
        finally:
            bar.close()

    def summary(self, stats: Stats, prior: int, elapsed: float) -> SynthSummary:
        plan, cfg, runner = self.plan, self.cfg, self.runner
        answered_ids = self.seen | runner.answered_ids
        b_done = sum(r.id in answered_ids for r in plan.brainstorm)
        e_done = sum(i in answered_ids for i in plan.example_ids())
        return {
            "run_dir": str(self.out),
            "complete": b_done == len(plan.brainstorm) and e_done == plan.n_examples,
            "stop_reason": runner.stop_reason,
            "fatal": runner.fatal,
            "brainstorm": {
                "planned": len(plan.brainstorm),
                "answered": b_done,
                "retries_answered": sum(i.startswith("brainstorm-") for i in answered_ids) - b_done,
            },
            "examples": {"planned": plan.n_examples, "answered": e_done, "by_type": plan.counts},
            "waiting_for_brainstorm": self.waiting,
            "brainstorm_exhausted": {
                name: {"answers": n, "retries": cfg.brainstorm_retries} for name, n in self.exhausted.items()
            },
            "answered_before": prior,
            "answered_this_session": stats.answered_now,
            "api_calls_total": stats.calls,
            "budget": {
                "calls": {"sent": stats.calls, "stored": stats.answered, "lost_in_flight": stats.lost_calls},
                "tokens": {"billed": stats.tokens, "reserved": stats.lost_tokens},
                "cost_usd": {"billed": round(stats.cost_usd, 6), "reserved": round(stats.lost_cost_usd, 6)},
            },
            "errors_this_session": dict(stats.errors),
            "failed_this_session": dict(stats.failed),
            "retry_after": {
                "received": len(stats.retry_after),
                "max_s": max(stats.retry_after, default=None),
                "capped": stats.retry_after_capped,
                "cap_s": cfg.retry_after_max_s,
            },
            "finish_reasons": dict(stats.finish),
            "refusals": stats.refusals,
            "rejected_answers": dict(stats.rejected),
            "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.completion_tokens,
            "cost_usd": round(stats.cost_usd, 6),
            "elapsed_s": round(elapsed, 3),
            "requests_per_s": round(stats.answered_now / elapsed, 2) if elapsed > 0 else None,
            "mean_latency_s": round(stats.latency_sum / stats.answered_now, 4) if stats.answered_now else None,
            "pools": self.pools_info,
        }


def _run_locked(plan: Plan, out: Path, say: Callable[[str], None]) -> SynthSummary:
    cfg = plan.config
    stats, seen, records = _load_state(out, say)
    prior = stats.answered
    log = AppendLog(out / "responses.jsonl", fsync=cfg.fsync, fsync_interval_s=cfg.fsync_interval_s)
    errlog = AppendLog(out / "errors.jsonl", fsync="never")
    calls_log = AppendLog(out / "calls.jsonl", fsync=cfg.fsync, fsync_interval_s=cfg.fsync_interval_s)
    runner = Runner(cfg, plan.types, log, errlog, stats, calls_log, say)
    session = _Session(plan, out, runner, seen, records, say)
    t0 = time.monotonic()
    try:
        asyncio.run(session.run())
    finally:
        log.close()
        errlog.close()
        calls_log.close()
    summary = session.summary(stats, prior, time.monotonic() - t0)
    write_json_atomic(out / "summary.json", summary)
    say(format_summary(summary))
    if runner.fatal:
        raise FatalAPIError(runner.fatal)
    return summary


def format_summary(s: SynthSummary) -> str:
    state = (
        "complete"
        if s["complete"]
        else f"INCOMPLETE ({s['stop_reason'] or 'some requests failed; rerun with --resume'})"
    )
    lines = [
        f"e5x synth: {state}",
        f"  brainstorm {s['brainstorm']['answered']}/{s['brainstorm']['planned']}, "
        f"examples {s['examples']['answered']}/{s['examples']['planned']} answered "
        f"({s['answered_this_session']} this session, {s['requests_per_s']} req/s)",
        f"  tokens {s['prompt_tokens']:,} prompt + {s['completion_tokens']:,} completion, cost ${s['cost_usd']:.4f}, "
        f"API calls {s['api_calls_total']}",
        f"  finish reasons {s['finish_reasons']}, refusals {s['refusals']}",
    ]
    b = s["budget"]
    if b["calls"]["lost_in_flight"]:
        lines.append(
            f"  budget: {b['calls']['sent']} calls sent, {b['calls']['stored']} answers stored, "
            f"{b['calls']['lost_in_flight']} lost in flight at a kill (reserved: {b['tokens']['reserved']:,} tokens, "
            f"${b['cost_usd']['reserved']:.4f}, counted against the caps)"
        )
    if s["rejected_answers"]:
        lines.append(f"  stored but unusable answers {s['rejected_answers']}")
    if s["errors_this_session"]:
        lines.append(f"  retried errors {s['errors_this_session']}")
    ra = s["retry_after"]
    if ra["capped"]:
        lines.append(
            f"  Retry-After: {ra['capped']} of {ra['received']} waits capped at {ra['cap_s']:g} s "
            f"(longest asked: {ra['max_s']:g} s; retry_after_max_s)"
        )
    if s["failed_this_session"]:
        lines.append(f"  gave up (will retry on --resume) {s['failed_this_session']}")
    for name, e in s["brainstorm_exhausted"].items():
        lines.append(
            f"  task type {name!r}: none of its {e['answers']} brainstorm answers gave a usable task and its "
            f"{e['retries']} brainstorm retries are spent; its examples are skipped (raise brainstorm_retries, --resume)"
        )
    if s["waiting_for_brainstorm"]:
        lines.append(f"  examples waiting for a complete task pool: {s['waiting_for_brainstorm']}")
    lines.append(f"  run directory {s['run_dir']}")
    return "\n".join(lines)
