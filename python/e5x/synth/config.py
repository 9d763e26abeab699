"""Typed configuration of the synth stage (``SynthConfig``), loadable from TOML.

API keys are never part of the config: an endpoint names the environment variable that
holds its key (``api_key_env``), so config snapshots written into a run directory are
safe to share.

A TOML config (``e5x synth synth.toml --out runs/synth``) sets any field; nested tables map
to the nested configs, and ``key.sub=value`` words override them (``examples.temperature=0.7``)::

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

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Le, Lt

from e5x.config import ConfigError, load, to_dict
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

Count = Annotated[int, Ge(0)]
Positive = Annotated[float, Gt(0)]
NonNegative = Annotated[float, Ge(0)]
Price = tuple[NonNegative, NonNegative]


@dataclass
class EndpointConfig:
    """Where requests go. ``provider="azure"`` uses AsyncAzureOpenAI (model = deployment)."""

    provider: Literal["openai", "azure"] = "openai"
    base_url: str | None = None  # vLLM, llama.cpp server, ... (".../v1")
    api_key_env: str | None = None  # default: OPENAI_API_KEY, or AZURE_OPENAI_API_KEY for azure
    azure_endpoint: str | None = None
    api_version: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request

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

    models: dict[str, float] = field(default_factory=lambda: {"gpt-4o": 0.75, "gpt-4o-mini": 0.25})  # name = weight
    temperature: NonNegative | None = 1.0
    top_p: Annotated[float, Gt(0), Le(1)] | None = 1.0
    max_tokens: Annotated[int, Gt(0)] | None = 2048  # max completion tokens of an answer
    # "max_completion_tokens" for OpenAI reasoning models; most servers take "max_tokens".
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    response_format: ResponseFormat = "json_object"
    json_schema_strict: bool = False
    system_prompt: str | None = None


@dataclass
class SynthConfig:
    """Everything ``e5x.synthesize`` needs; every field has a working default."""

    n_examples: Annotated[int, Ge(0), Le(MAX_EXAMPLES)] = 1000
    seed: Annotated[int, Ge(0), Lt(2**64)] = 0
    task_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TASK_WEIGHTS))  # type = weight
    language_weights: dict[str, float] | None = None  # language = weight; unset: the published mix
    task_types_file: str | None = None  # TOML with custom [task_types.NAME]
    tasks_per_brainstorm: Annotated[int, Ge(1)] = 20
    examples_per_task: Positive = 3.3  # sizes the brainstorm step: 500k examples / 150k tasks
    # Brainstorm requests per task type, instead of the count examples_per_task gives.
    brainstorm_requests: dict[str, Annotated[int, Ge(1), Le(MAX_EXAMPLES)]] | None = None
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    brainstorm: StepConfig = field(default_factory=lambda: StepConfig(max_tokens=1024))
    examples: StepConfig = field(default_factory=StepConfig)
    # --- throughput and robustness
    concurrency: Annotated[int, Ge(1)] = 16  # requests in flight
    rpm: Positive | None = None  # requests per minute limit
    tpm: Positive | None = None  # tokens per minute limit
    timeout_s: Positive = 120.0  # per-request timeout, seconds
    max_retries: Count = 6
    http_backend: Literal["auto", "aiohttp", "httpx"] = "auto"  # auto: aiohttp when installed
    backoff_base_s: NonNegative = 1.0
    backoff_max_s: NonNegative = 60.0
    # A server's Retry-After is honoured up to this many seconds (longer ones are capped
    # and logged): one bad header must not pause every worker for hours.
    retry_after_max_s: NonNegative = 120.0
    # Extra brainstorm requests a task type gets when every brainstorm answer it has is
    # unusable (none parses into a task); once spent, its examples wait and the summary names it.
    brainstorm_retries: Count = 3
    # Budget caps over the whole run directory (resumes and calls lost at a kill included);
    # None = no cap. max_requests is never exceeded. Token and cost caps reserve an upper
    # bound per call in flight, prompt + max_tokens, the prompt counted in one of two modes
    # (synth/tokens.py): tiktoken (installed, knows the model, BPE file cached or
    # downloadable): content tokens + a template allowance, never exceeded on a server that
    # tokenizes as tiktoken does (OpenAI, Azure OpenAI); bytes (any other model): UTF-8
    # bytes + the allowance, never exceeded for tokenizers of at least one byte per token
    # (byte-level BPE, byte-fallback SentencePiece). Either with max_tokens set; otherwise,
    # or on a server counting more than the bound, by at most concurrency x the excess of
    # one call over its reservation (see runner.py).
    max_requests: Count | None = None  # API calls, retries included
    max_tokens_total: Count | None = None
    max_cost_usd: NonNegative | None = None
    # USD per 1M tokens [input, output] by model; overrides DEFAULT_PRICES.
    prices: dict[str, Price] = field(default_factory=dict)
    # Durability: "interval" fsyncs the response log at most every fsync_interval_s
    # (a kill -9 loses nothing either way; fsync only guards against OS crash / power loss).
    fsync: Literal["always", "interval", "never"] = "interval"
    fsync_interval_s: NonNegative = 1.0
    progress: bool = True  # a progress bar on stderr

    def price(self, model: str) -> tuple[float, float] | None:
        table = {**DEFAULT_PRICES, **{k: tuple(v) for k, v in self.prices.items()}}
        p = table.get(model)
        return (float(p[0]), float(p[1])) if p is not None else None

    def check(self) -> None:
        """What fields require of each other (each field's type and range are checked
        before): weights that sum to more than 0, a plan of bounded size, a price for every
        model when a cost cap is set."""
        weights = [("task_weights", self.task_weights), ("language_weights", self.language_weights),
                   ("brainstorm.models", self.brainstorm.models), ("examples.models", self.examples.models)]  # fmt: skip
        for name, table in weights:
            if table is not None:
                try:
                    check_weights(table, where=name)
                except ValueError as e:
                    raise ConfigError(str(e).removeprefix(f"{name}: "), field=name) from None
        if self.n_examples / (self.tasks_per_brainstorm * self.examples_per_task) > MAX_EXAMPLES:
            raise ConfigError(
                f"n_examples / (tasks_per_brainstorm x examples_per_task) plans more than {MAX_EXAMPLES:_} "
                f"brainstorm requests; raise examples_per_task (got {self.examples_per_task!r})",
                field="examples_per_task",
            )
        if self.max_cost_usd is not None:
            for step in ("brainstorm", "examples"):
                for m, w in getattr(self, step).models.items():
                    if w > 0 and self.price(m) is None:
                        raise ConfigError(
                            f"is set but model {m!r} ({step}.models) has no price; "
                            f"add prices.{m} = [input_usd_per_1M, output_usd_per_1M]",
                            field="max_cost_usd",
                        )

    # ---- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "config") -> SynthConfig:
        """Build and validate (``e5x.config.load``); an error names ``where`` and the field."""
        return load(cls, data, where=where)

    @classmethod
    def from_toml(cls, path: str | Path) -> SynthConfig:
        return load(cls, path)

    @classmethod
    def from_table(cls, table: dict[str, Any], path: Path | None) -> dict[str, Any]:
        """Custom task types may live in the same TOML file ([task_types.NAME]); a relative
        task_types_file is relative to the file."""
        if path is None:
            return table
        table = dict(table)
        if table.pop("task_types", None) and "task_types_file" not in table:
            table["task_types_file"] = str(path.resolve())
        types_file = table.get("task_types_file")
        if isinstance(types_file, str) and not Path(types_file).is_absolute():
            table["task_types_file"] = str(path.parent / types_file)
        return table
