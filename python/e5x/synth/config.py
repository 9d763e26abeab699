"""Typed configuration of the synth stage (``SynthConfig``), loadable from TOML.

API keys are never part of the config: an endpoint names the environment variable that
holds its key (``api_key_env``), so config snapshots written into a run directory are
safe to share.

A TOML config (``e5x synth --config synth.toml --out runs/synth``) sets any field; nested
tables map to the nested configs::

    n_examples = 500000          # the paper's scale
    seed = 0
    concurrency = 64
    rpm = 10000
    tpm = 2000000
    max_cost_usd = 2500
    [task_weights]               # default: the published mix
    short_long = 167
    long_short = 122
    [language_weights]           # default: en 43%, 13 high-resource 3% each, rest 18%
    en = 0.5
    de = 0.5
    [endpoint]                   # or provider = "azure", azure_endpoint, api_version
    base_url = "http://127.0.0.1:8000/v1"
    api_key_env = "VLLM_KEY"
    [examples]
    models = { "gpt-4o" = 0.75, "gpt-4o-mini" = 0.25 }
    response_format = "json_schema"
    [prices]                     # USD per 1M tokens (input, output)
    "my-model" = [0.2, 0.6]
    [task_types.my_type]         # custom task types may live in the same file
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from e5x.tasks.taxonomy import DEFAULT_TASK_WEIGHTS, check_weights

# USD per 1M tokens (input, output); public list prices, override with `prices`.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
}

ResponseFormat = Literal["none", "json_object", "json_schema"]

# The plan holds every request in memory (up to ~0.5 KB each while it is built): 20x the
# paper's 500k examples is the most one run directory plans; split bigger jobs into runs.
MAX_EXAMPLES = 10_000_000


@dataclass
class EndpointConfig:
    """Where requests go. ``provider="azure"`` uses AsyncAzureOpenAI (model = deployment)."""

    provider: Literal["openai", "azure"] = "openai"
    base_url: str | None = None  # vLLM, llama.cpp server, ... (".../v1")
    api_key_env: str | None = None  # default: OPENAI_API_KEY, or AZURE_OPENAI_API_KEY for azure
    azure_endpoint: str | None = None
    api_version: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def key_env(self) -> str:
        if self.api_key_env:
            return self.api_key_env
        return "AZURE_OPENAI_API_KEY" if self.provider == "azure" else "OPENAI_API_KEY"

    def api_key(self) -> str | None:
        return os.environ.get(self.key_env)


@dataclass
class StepConfig:
    """Sampling settings and the weighted model mix of one step (brainstorm or examples)."""

    models: dict[str, float] = field(default_factory=lambda: {"gpt-4o": 0.75, "gpt-4o-mini": 0.25})
    temperature: float | None = 1.0
    top_p: float | None = 1.0
    max_tokens: int | None = 2048
    # "max_completion_tokens" for OpenAI reasoning models; most servers take "max_tokens".
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    response_format: ResponseFormat = "json_object"
    json_schema_strict: bool = False
    system_prompt: str | None = None


@dataclass
class SynthConfig:
    """Everything ``e5x.synthesize`` needs; every field has a working default."""

    n_examples: int = 1000
    seed: int = 0
    task_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TASK_WEIGHTS))
    language_weights: dict[str, float] | None = None  # None = the published default
    task_types_file: str | None = None  # TOML with custom [task_types.NAME]
    tasks_per_brainstorm: int = 20
    examples_per_task: float = 3.3  # sizes the brainstorm step: 500k examples / 150k tasks
    brainstorm_requests: dict[str, int] | None = None  # explicit count per type
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    brainstorm: StepConfig = field(default_factory=lambda: StepConfig(max_tokens=1024))
    examples: StepConfig = field(default_factory=StepConfig)
    # Throughput and robustness.
    concurrency: int = 16
    rpm: float | None = None
    tpm: float | None = None
    timeout_s: float = 120.0
    max_retries: int = 6
    http_backend: Literal["auto", "aiohttp", "httpx"] = "auto"  # auto: aiohttp when installed
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    # A server's Retry-After is honoured up to this many seconds (longer ones are capped
    # and logged): one bad header must not pause every worker for hours.
    retry_after_max_s: float = 120.0
    # Extra brainstorm requests a task type gets when every brainstorm answer it has is
    # unusable (none parses into a task); once spent, its examples wait and the summary names it.
    brainstorm_retries: int = 3
    # Budget caps over the whole run directory (resumes and calls lost at a kill included);
    # None = no cap. max_requests is never exceeded. Token and cost caps reserve an upper
    # bound per call in flight (prompt UTF-8 bytes + max_tokens) and are never exceeded for
    # byte-level tokenizers with max_tokens set; otherwise by at most concurrency x the
    # excess of one call over its reservation (see runner.py).
    max_requests: int | None = None  # API calls, retries included
    max_tokens_total: int | None = None
    max_cost_usd: float | None = None
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)  # overrides DEFAULT_PRICES
    # Durability: "interval" fsyncs the response log at most every fsync_interval_s
    # (a kill -9 loses nothing either way; fsync only guards against OS crash / power loss).
    fsync: Literal["always", "interval", "never"] = "interval"
    fsync_interval_s: float = 1.0
    progress: bool = True

    # ---- checks -----------------------------------------------------------------------
    def price(self, model: str) -> tuple[float, float] | None:
        table = {**DEFAULT_PRICES, **{k: tuple(v) for k, v in self.prices.items()}}
        p = table.get(model)
        return (float(p[0]), float(p[1])) if p is not None else None

    def check(self) -> None:
        """Raise ValueError on anything that would make the run fail later: every field's
        type first (a string where a table is expected is an error, not a list of
        letters), then ranges, then what fields require of each other. Runs before any
        request is sent."""
        check_types(self)
        self.check_ranges()
        if self.n_examples / (self.tasks_per_brainstorm * self.examples_per_task) > MAX_EXAMPLES:
            raise ValueError(
                f"n_examples / (tasks_per_brainstorm x examples_per_task) plans more than {MAX_EXAMPLES:_} "
                f"brainstorm requests; raise examples_per_task (got {self.examples_per_task!r})"
            )
        if self.max_cost_usd is not None:
            for step in ("brainstorm", "examples"):
                for m, w in getattr(self, step).models.items():
                    if w > 0 and self.price(m) is None:
                        raise ValueError(
                            f"max_cost_usd is set but model {m!r} ({step}.models) has no price; "
                            f"add prices.{m} = [input_usd_per_1M, output_usd_per_1M]"
                        )

    def check_ranges(self) -> None:
        """Each field on its own within range (types already checked)."""
        if not 0 <= self.n_examples <= MAX_EXAMPLES:
            raise ValueError(f"n_examples must be an integer in [0, {MAX_EXAMPLES:_}], got {self.n_examples!r}")
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {self.seed!r}")
        check_weights(self.task_weights, where="task_weights")
        if self.language_weights is not None:
            check_weights(self.language_weights, where="language_weights")
        for step in ("brainstorm", "examples"):
            s: StepConfig = getattr(self, step)
            check_weights(s.models, where=f"{step}.models")
            if s.max_tokens is not None and s.max_tokens <= 0:
                raise ValueError(f"{step}.max_tokens must be > 0, got {s.max_tokens!r}")
            if s.temperature is not None and not (math.isfinite(s.temperature) and s.temperature >= 0):
                raise ValueError(f"{step}.temperature must be a finite number >= 0, got {s.temperature!r}")
            if s.top_p is not None and not 0 < s.top_p <= 1:
                raise ValueError(f"{step}.top_p must be in (0, 1], got {s.top_p!r}")
        for name, val, lo in (
            ("concurrency", self.concurrency, 1),
            ("tasks_per_brainstorm", self.tasks_per_brainstorm, 1),
            ("max_retries", self.max_retries, 0),
            ("brainstorm_retries", self.brainstorm_retries, 0),
            ("max_requests", self.max_requests, 0),
            ("max_tokens_total", self.max_tokens_total, 0),
        ):
            if val is not None and val < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {val!r}")
        for name in ("rpm", "tpm", "timeout_s", "examples_per_task"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v <= 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        for name in ("max_cost_usd", "backoff_base_s", "backoff_max_s", "retry_after_max_s", "fsync_interval_s"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v < 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        for t, nb in (self.brainstorm_requests or {}).items():
            if not 1 <= nb <= MAX_EXAMPLES:
                raise ValueError(f"brainstorm_requests.{t} must be an integer in [1, {MAX_EXAMPLES:_}], got {nb!r}")
        for m, pr in self.prices.items():
            if len(pr) != 2 or not all(math.isfinite(x) and x >= 0 for x in pr):
                raise ValueError(f"prices.{m} must be [input, output] USD per 1M tokens, finite and >= 0, got {pr!r}")

    # ---- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "config") -> SynthConfig:
        """Build and type-check; an error names ``where`` and the field."""
        cfg = _build(cls, data, where)
        try:
            check_types(cfg)
            cfg.check_ranges()
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        return cfg

    @classmethod
    def from_toml(cls, path: str | Path) -> SynthConfig:
        from e5x.tasks.taxonomy import _read_toml

        path = Path(path)
        data = dict(_read_toml(path))
        inline_types = data.pop("task_types", None)  # custom task types may live in the same file
        cfg = cls.from_dict(data, where=str(path))
        if inline_types and cfg.task_types_file is None:
            cfg.task_types_file = str(path.resolve())
        if cfg.task_types_file is not None and not Path(cfg.task_types_file).is_absolute():
            cfg.task_types_file = str(path.parent / cfg.task_types_file)
        return cfg


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + "|".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (dict, Mapping):
        return f"a table of name = {_describe(args[1])}"
    if origin is tuple:
        return f"a list of {len(args)} numbers"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "unset"}.get(
        tp, str(tp)
    )


def _type_ok(v: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return any(v == a and type(v) is type(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(v, a) for a in args)
    if origin in (dict, Mapping):
        return isinstance(v, Mapping) and all(isinstance(k, str) and _type_ok(x, args[1]) for k, x in v.items())
    if origin is tuple:
        return isinstance(v, (list, tuple)) and len(v) == len(args) and all(_type_ok(x, a) for x, a in zip(v, args))
    if tp is type(None):
        return v is None
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if dataclasses.is_dataclass(tp):
        return isinstance(v, tp)
    return isinstance(v, tp)


def check_types(obj: Any, prefix: str = "") -> None:
    """ValueError naming the first field of the dataclass ``obj`` (nested ones included)
    whose value does not match its annotation."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        v, tp = getattr(obj, f.name), hints[f.name]
        if dataclasses.is_dataclass(tp) and dataclasses.is_dataclass(v) and isinstance(v, tp):
            check_types(v, f"{prefix}{f.name}.")
        elif not _type_ok(v, tp):
            shown = repr(v) if len(repr(v)) <= 80 else repr(v)[:77] + "..."
            raise ValueError(f"{prefix}{f.name} must be {_describe(tp)}, got {shown} ({type(v).__name__})")


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a table, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(fields)}")
    kwargs = {}
    nested = {"endpoint": EndpointConfig, "brainstorm": StepConfig, "examples": StepConfig}
    for k, v in data.items():
        if cls is SynthConfig and k in nested and isinstance(v, Mapping):
            v = _build(nested[k], v, f"{where}: [{k}]")
        kwargs[k] = v
    return cls(**kwargs)
