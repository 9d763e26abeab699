"""The async request engine: bounded concurrency, RPM/TPM limits, retries, budget, storage.

One worker coroutine per concurrency slot pulls planned requests from a shared queue.
A request is *answered* when a chat completion (HTTP 200 with a ``choices`` entry) is
appended to the response log; only then is it counted. Transport faults (429, 5xx,
timeouts, dropped connections, unparseable bodies) are retried with exponential backoff
and jitter, honouring ``Retry-After`` up to ``retry_after_max_s``; each failed attempt is
logged to ``errors.jsonl``. An answer of any shape is stored (see ``response.py``):
truncated, refused, empty or odd ones too, with ``rejected`` naming why it cannot be used,
so a paid answer is never asked for twice; ``e5x clean`` rejects them with their reason.
Requests go through a ``ChatClient`` (see ``client.py``; the OpenAI/Azure one by
default), which sends one attempt and reports a fault as transient or fatal; every retry
is the runner's.

Budgets survive kill -9: before a call is sent, a reservation (its id and worst-case
tokens and cost) is appended to ``calls.jsonl``; answers and errors name the call they
settle. A reservation with neither (the process died with the call in flight) stays
counted at its worst case on every resume, so ``max_requests`` counts every call ever
sent and the token and cost caps count what such a call may have cost.

Token and cost caps reserve ``prompt_tokens_bound`` (see ``tokens.py``: the model's
content tokens counted with tiktoken where it knows the model and has its BPE file, else
the UTF-8 bytes of the messages; plus a chat-template allowance) plus the step's
``max_tokens`` per call in flight, then settle on the server's reported usage. With
``max_tokens`` set, a cap is never exceeded: in tiktoken mode by a server that tokenizes
as tiktoken does (OpenAI, Azure OpenAI), in byte mode by any tokenizer with at least one
byte per token (byte-level BPE, byte-fallback SentencePiece). A server counting more than
the bound (a tiktoken-known model name served with another tokenizer, a template adding
more than the allowance), or ``max_tokens = None`` (the completion reserve is then the
type's typical size), can overshoot a cap by at most the excess of the calls in flight at
once: ``concurrency`` x (actual - reserved) tokens.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from e5x.formats.response_log import AppendLog, response_record
from e5x.synth.client import ChatClient, FatalFault, OpenAIChatClient, TransientFault
from e5x.synth.client import retry_after_seconds as retry_after_seconds  # re-exported for callers of runner
from e5x.synth.config import StepConfig, SynthConfig
from e5x.synth.plan import Request
from e5x.synth.response import parse_completion, token_count
from e5x.synth.tokens import prompt_tokens_bound
from e5x.tasks.taxonomy import TaskType

LONG_PAUSE_S = 10.0  # a Retry-After pause this long is said on stderr, not only logged


@dataclass
class Stats:
    """Counters of the run directory (previous sessions included where noted)."""

    calls: int = 0  # API calls sent or reserved, retries included (all sessions)
    answered: int = 0  # stored answers (all sessions)
    answered_now: int = 0  # stored by this session
    prompt_tokens: int = 0  # billed: the usage of stored answers
    completion_tokens: int = 0
    cost_usd: float = 0.0
    # Calls a kill left without an outcome (earlier sessions): counted at their reservation.
    lost_calls: int = 0
    lost_tokens: int = 0
    lost_cost_usd: float = 0.0
    finish: Counter[str] = field(default_factory=Counter)  # finish_reason of stored answers
    refusals: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # stored answers that cannot be used, by reason
    errors: Counter[str] = field(default_factory=Counter)  # failed attempts by kind (this session)
    failed: Counter[str] = field(default_factory=Counter)  # requests given up this session, by last error
    retry_after: list[float] = field(default_factory=list)  # Retry-After values received (this session)
    retry_after_capped: int = 0
    latency_sum: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add_answer(self, rec: dict[str, Any], cost: float) -> None:
        """Count one stored answer; any log record is accepted (odd values count as 0)."""
        self.answered += 1
        u = rec.get("usage")
        u = u if isinstance(u, dict) else {}
        self.prompt_tokens += token_count(u.get("prompt_tokens")) or 0
        self.completion_tokens += token_count(u.get("completion_tokens")) or 0
        self.cost_usd += cost
        self.finish[str(rec.get("finish_reason"))] += 1
        if rec.get("refusal"):
            self.refusals += 1
        if rec.get("rejected"):
            self.rejected[str(rec["rejected"])[:100]] += 1


class TokenBucket:
    """Per-minute limit as a bucket holding 1 s of allowance (a smooth rate, no minute-start
    burst); it may go into debt so a request larger than the bucket still passes (it just
    delays those after it)."""

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.t = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now

    async def acquire(self, amount: float) -> None:
        need = min(amount, self.capacity)
        while True:
            self._refill()
            if self.level >= need:
                self.level -= amount
                return
            await asyncio.sleep((need - self.level) / self.rate)

    def credit(self, amount: float) -> None:
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class Runner:
    def __init__(
        self,
        cfg: SynthConfig,
        types: dict[str, TaskType],
        log: AppendLog,
        errlog: AppendLog,
        stats: Stats,
        calls_log: AppendLog | None = None,
        say: Callable[[str], None] | None = None,
        client: ChatClient | None = None,
    ) -> None:
        """``client`` sends the requests; None: an OpenAIChatClient for ``cfg.endpoint``,
        made at the first request."""
        self.cfg = cfg
        self.types = types
        self.log = log
        self.errlog = errlog
        self.calls_log = calls_log
        self.say = say or (lambda m: print(m, file=sys.stderr))
        self.stats = stats
        # Call ids are unique across sessions: attempts restart at 1 on every resume.
        self.session = f"{int(time.time()):x}{random.getrandbits(24):06x}"
        self._ncalls = 0
        self.stop_reason: str | None = None
        self.answered_ids: set[str] = set()
        self.brainstorm_records: list[dict[str, Any]] = []
        self.fatal: str | None = None
        self._pause_until = 0.0
        self._reserved_tokens = 0
        self._reserved_cost = 0.0
        self._calls_in_flight = 0
        self._settled: asyncio.Event | None = None  # set when a call in flight settles
        self._inflight = 0
        self._rpm = TokenBucket(cfg.rpm) if cfg.rpm else None
        self._tpm = TokenBucket(cfg.tpm) if cfg.tpm else None
        self._client = client
        self._rand = random.Random()
        self._bar: Any = None
        self._last_postfix = 0.0

    # ---- client -----------------------------------------------------------------------
    def client(self) -> ChatClient:
        if self._client is None:
            self._client = OpenAIChatClient(self.cfg)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---- accounting ---------------------------------------------------------------------
    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        p = self.cfg.price(model)
        return 0.0 if p is None else (prompt_tokens * p[0] + completion_tokens * p[1]) / 1e6

    def _reserve(self, req: Request, step: StepConfig) -> tuple[int, float]:
        """Worst-case tokens and cost of one call (see the module docstring)."""
        completion = step.max_tokens or req.expected_completion_tokens
        prompt = prompt_tokens_bound(req.messages, req.model)
        return prompt + completion, self.cost(req.model, prompt, completion)

    def _over_budget(self, tokens: int, cost: float) -> str | None:
        c, s = self.cfg, self.stats
        if c.max_requests is not None and s.calls + 1 > c.max_requests:
            return f"budget: max_requests={c.max_requests} reached"
        if (
            c.max_tokens_total is not None
            and s.tokens + s.lost_tokens + self._reserved_tokens + tokens > c.max_tokens_total
        ):
            return f"budget: max_tokens_total={c.max_tokens_total} would be exceeded"
        if c.max_cost_usd is not None and s.cost_usd + s.lost_cost_usd + self._reserved_cost + cost > c.max_cost_usd:
            return f"budget: max_cost_usd={c.max_cost_usd} would be exceeded"
        return None

    async def _admit(self, tokens: int, cost: float) -> bool:
        """True once the call fits the caps. A token or cost cap that only the worst case
        of the calls in flight blocks waits for them to settle (they usually cost far less
        than reserved); with nothing in flight, or for max_requests, the run stops."""
        while True:
            if self.stop_reason is not None:
                return False
            reason = self._over_budget(tokens, cost)
            if reason is None:
                return True
            if self._calls_in_flight == 0 or "max_requests" in reason:
                self.stop_reason = reason
                return False
            if self._settled is None:
                self._settled = asyncio.Event()
            await self._settled.wait()

    # ---- the loop -------------------------------------------------------------------------
    async def run(self, requests: list[Request], step: StepConfig, bar: Any = None) -> None:
        self._bar = bar
        queue = deque(requests)
        n = min(self.cfg.concurrency, len(queue))
        await asyncio.gather(*(self._worker(queue, step) for _ in range(n)))

    async def _worker(self, queue: deque[Request], step: StepConfig) -> None:
        while queue and self.stop_reason is None:
            await self._do(queue.popleft(), step)

    def _request_kwargs(self, req: Request, step: StepConfig) -> dict[str, Any]:
        kw: dict[str, Any] = {"model": req.model, "messages": req.messages}
        if step.temperature is not None:
            kw["temperature"] = step.temperature
        if step.top_p is not None:
            kw["top_p"] = step.top_p
        if step.max_tokens is not None:
            kw[step.max_tokens_param] = step.max_tokens
        if step.response_format == "json_object":
            kw["response_format"] = {"type": "json_object"}
        elif step.response_format == "json_schema":
            kw["response_format"] = {"type": "json_schema", "json_schema": self._json_schema(req, step)}
        return kw

    def _json_schema(self, req: Request, step: StepConfig) -> dict[str, Any]:
        if req.step == "brainstorm":
            schema: dict[str, Any] = {
                "type": "object",
                # Non-empty list of non-empty strings: small models happily answer {"tasks": []}.
                "properties": {"tasks": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}},
                "required": ["tasks"],
                "additionalProperties": False,
            }
            name = "task_list"
        else:
            schema = {k: v for k, v in self.types[req.task_type].schema.items() if k != "$schema"}
            name = req.task_type
        return {"name": name, "schema": schema, "strict": step.json_schema_strict}

    async def _wait_turn(self, tokens: int) -> None:
        while (delay := self._pause_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        if self._rpm is not None:
            await self._rpm.acquire(1)
        if self._tpm is not None:
            await self._tpm.acquire(tokens)

    async def _do(self, req: Request, step: StepConfig) -> None:
        kwargs = self._request_kwargs(req, step)
        # The rate limiter paces on the typical size; the budget reserves the worst case.
        tpm_tokens = req.prompt_tokens_est + (step.max_tokens or req.expected_completion_tokens)
        est_tokens, est_cost = self._reserve(req, step)
        attempt = 0
        while True:
            if self.stop_reason is not None:
                return  # left unanswered; a resume picks it up
            await self._wait_turn(tpm_tokens)
            # Check, reserve and count with no await in between, so concurrent workers
            # cannot all pass the check and overshoot a cap together.
            if not await self._admit(est_tokens, est_cost):
                return
            self._reserved_tokens += est_tokens
            self._reserved_cost += est_cost
            self._calls_in_flight += 1
            self.stats.calls += 1
            attempt += 1
            self._ncalls += 1
            call = f"{self.session}-{self._ncalls}"
            if self.calls_log is not None:  # durable before the request leaves
                self.calls_log.append(
                    {"call": call, "id": req.id, "attempt": attempt, "tokens": est_tokens,
                     "cost_usd": est_cost, "ts": time.time()}
                )  # fmt: skip
            try:
                kind, detail, retry_after = await self._attempt(req, kwargs, attempt, tpm_tokens, call)
            finally:
                self._reserved_tokens -= est_tokens
                self._reserved_cost -= est_cost
                self._calls_in_flight -= 1
                if self._settled is not None:
                    self._settled.set()
                    self._settled = None
            if kind is None:
                return  # stored
            self.stats.errors[kind] += 1
            err: dict[str, Any] = {
                "id": req.id, "call": call, "attempt": attempt, "kind": kind, "detail": detail[:500],
                "model": req.model, "ts": time.time(),
            }  # fmt: skip
            if retry_after is not None:
                self.stats.retry_after.append(retry_after)
                err["retry_after_s"] = retry_after
                if retry_after > self.cfg.retry_after_max_s:
                    self.stats.retry_after_capped += 1
                    retry_after = self.cfg.retry_after_max_s
                    err["retry_after_capped_s"] = retry_after
            self.errlog.append(err)
            self._update_bar()
            if kind in ("auth", "not_found"):
                self.fatal = self.fatal or f"{kind}: {detail}"
                self.stop_reason = f"fatal API error ({kind}): {detail}"
                return
            if kind == "bad_request" or attempt > self.cfg.max_retries:
                self.stats.failed[kind] += 1
                return
            cap = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** (attempt - 1))
            delay = cap / 2 + self._rand.uniform(0, cap / 2)  # "equal jitter"
            if retry_after is not None:
                delay = max(delay, retry_after)
                if kind == "rate_limited":  # the whole endpoint is saturated: everyone waits
                    until = time.monotonic() + retry_after
                    if retry_after >= LONG_PAUSE_S and until > self._pause_until + 1:
                        asked = err["retry_after_s"]
                        capped = f" (asked {asked:g} s, capped by retry_after_max_s)" if asked > retry_after else ""
                        self.say(f"e5x synth: rate limited; every request waits {retry_after:g} s{capped}")
                    self._pause_until = max(self._pause_until, until)
            await asyncio.sleep(delay)

    async def _attempt(
        self, req: Request, kwargs: dict[str, Any], attempt: int, tpm_tokens: int, call: str
    ) -> tuple[str | None, str, float | None]:
        """One call. Returns (None, "", None) once the answer is stored, else the fault's
        kind, detail and Retry-After."""
        t0 = time.monotonic()
        self._inflight += 1
        try:
            body = await self.client().chat(kwargs, request_id=req.id)
        except (TransientFault, FatalFault) as e:
            return e.kind, e.detail, getattr(e, "retry_after", None)
        finally:
            self._inflight -= 1
        latency = time.monotonic() - t0
        try:
            # Missing usage: bill the bound, so budgets stay on the safe side.
            c = parse_completion(body, prompt_tokens_bound(req.messages, req.model))
        except (ValueError, RecursionError) as e:  # MalformedBody
            return "malformed", f"unparseable response body ({e}): {json.dumps(body, default=str)[:200]!r}", None
        pt, ct = c.prompt_tokens, c.completion_tokens
        cost = self.cost(req.model, pt, ct)
        rec = response_record(
            id=req.id,
            step=req.step,
            task_type=req.task_type,
            model=req.model,
            response_model=c.model,
            messages=req.messages,
            params={k: v for k, v in kwargs.items() if k not in ("model", "messages")},
            meta=req.meta,
            content=c.content,
            refusal=c.refusal,
            finish_reason=c.finish_reason,
            rejected=c.rejected,
            prompt_tokens=pt,
            completion_tokens=ct,
            usage_estimated=c.usage_estimated,
            latency_s=latency,
            attempts=attempt,
            call=call,
            response_id=c.response_id,
            ts=time.time(),
            extra=c.extra,
            cost_usd=cost,
        )
        # Durable first, counted second: a kill between the two loses only the count.
        self.log.append(rec)
        self.answered_ids.add(req.id)
        if req.step == "brainstorm":  # step 2 needs them; examples are not kept in memory
            self.brainstorm_records.append(rec)
        self.stats.add_answer(rec, cost)
        self.stats.answered_now += 1
        self.stats.latency_sum += latency
        if self._tpm is not None:
            self._tpm.credit(tpm_tokens - (pt + ct))
        if self._bar is not None:
            self._bar.update(1)
            self._update_bar()
        return None, "", None

    def _update_bar(self) -> None:
        now = time.monotonic()
        if self._bar is None or now - self._last_postfix < 0.25:
            return
        self._last_postfix = now
        s = self.stats
        self._bar.set_postfix_str(
            f"tok={s.tokens:,} ${s.cost_usd:.4f} err={sum(s.errors.values())} len={s.finish.get('length', 0)} "
            f"ref={s.refusals} rej={sum(s.rejected.values())}",
            refresh=False,
        )


def progress_bar(total: int, initial: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, unit="req", disable=not enabled, file=sys.stderr, dynamic_ncols=True
    )
