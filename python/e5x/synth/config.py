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
    # Budget caps over the whole run directory (resumes included); None = no cap.
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
        """Raise ValueError on anything that would make the run fail later."""
        if not isinstance(self.n_examples, int) or self.n_examples < 0:
            raise ValueError(f"n_examples must be an integer >= 0, got {self.n_examples!r}")
        check_weights(self.task_weights, where="task_weights")
        if self.language_weights is not None:
            check_weights(self.language_weights, where="language_weights")
        for step in ("brainstorm", "examples"):
            s: StepConfig = getattr(self, step)
            check_weights(s.models, where=f"{step}.models")
            if s.response_format not in ("none", "json_object", "json_schema"):
                raise ValueError(f"{step}.response_format must be none|json_object|json_schema, got {s.response_format!r}")
            if s.max_tokens is not None and s.max_tokens <= 0:
                raise ValueError(f"{step}.max_tokens must be > 0")
            if self.max_cost_usd is not None:
                for m, w in s.models.items():
                    if w > 0 and self.price(m) is None:
                        raise ValueError(
                            f"max_cost_usd is set but model {m!r} ({step}.models) has no price; "
                            f"add prices.{m} = [input_usd_per_1M, output_usd_per_1M]"
                        )
        for name, val, lo in (
            ("concurrency", self.concurrency, 1),
            ("tasks_per_brainstorm", self.tasks_per_brainstorm, 1),
            ("max_retries", self.max_retries, 0),
        ):
            if not isinstance(val, int) or val < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {val!r}")
        for name in ("rpm", "tpm", "timeout_s", "examples_per_task", "max_cost_usd"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if self.http_backend not in ("auto", "aiohttp", "httpx"):
            raise ValueError(f"http_backend must be auto|aiohttp|httpx, got {self.http_backend!r}")
        if self.fsync not in ("always", "interval", "never"):
            raise ValueError(f"fsync must be always|interval|never, got {self.fsync!r}")
        if self.endpoint.provider not in ("openai", "azure"):
            raise ValueError(f"endpoint.provider must be openai|azure, got {self.endpoint.provider!r}")

    # ---- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "config") -> SynthConfig:
        return _build(cls, data, where)

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
