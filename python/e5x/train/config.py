"""``TrainConfig``: the whole recipe as one typed dataclass, loadable from TOML.

Defaults are the paper's (E5-mistral-7b-instruct). Unknown keys are errors that name the
file, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from e5x.data.triples import Source, SourceStats
from e5x.model.loading import LORA_TARGETS, TinyModelConfig
from e5x.model.pooling import POOLINGS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A bad training config; raised before any model is loaded."""


@dataclass
class TrainConfig:
    # --- model
    model: str = "mistralai/Mistral-7B-v0.1"
    tokenizer: str | None = None  # defaults to `model`
    tiny_model: TinyModelConfig | None = None  # build a random model instead of loading one
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    gradient_checkpointing: bool = True
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on GPU
    packing: bool = False  # padding-free packed forwards (e5x.model.packing)
    # With packing: the last `checkpoint_keep` layers skip activation checkpointing and the
    # `checkpoint_save_matmuls` layers before them keep their matmul outputs (e5x.model.fast).
    checkpoint_keep: int = 0
    checkpoint_save_matmuls: int = 0
    liger: bool = False  # liger-kernel's fused RMSNorm/SwiGLU/RoPE (GPU, when installed)
    # --- kernels (e5x.kernels.configure; E5X_INFONCE_MODE / E5X_INFONCE_CHUNK_MIB /
    # E5X_AUTOTUNE / E5X_FLEX_COMPILE override them; the effective values go to
    # kernels.json in output_dir)
    infonce_mode: Literal["auto", "fused", "lean", "backward"] = "auto"
    infonce_chunk_mib: float = 1024.0  # memory budget of the InfoNCE gradient chunks
    kernel_autotune: bool = True  # tune the Triton tile configs (else the first config)
    flex_compile: bool = True  # torch.compile FlexAttention (packed backend "flex", CUDA)
    # --- data
    sources: list[Source] = field(default_factory=list)
    max_length: int = 512
    padding_side: Literal["left", "right"] = "right"
    task_homogeneous: bool = False
    # --- loss and batch
    # How hidden states become an embedding (e5x.model.pooling; "mean" is the paper's
    # ablation); saved in the model's e5x.json so inference pools the same way.
    pooling: str = "last_token"
    batch_size: int = 2048  # global queries per step, across all ranks
    chunk_size: int = 32  # GradCache chunk (sequences per forward); >= batch disables it
    # GradCache chunk by tokens per forward instead (real tokens with packing, rows x
    # longest row without); when set, chunk_size is not used. A rank's batch within the
    # budget runs one forward per side and no GradCache at all.
    chunk_tokens: int | None = None
    temperature: float = 0.02
    # Drop in-batch false negatives: a document whose normalised text equals a row's
    # positive or query is no negative for that row (labels repeat across classification
    # rows; public sets repeat positives). The count per step is logged as masked_negatives.
    mask_false_negatives: bool = True
    # Matryoshka: the loss also trains these leading dimensions as embeddings of their own
    # (e.g. [1024, 256, 64] for a 4096-wide model); [] = the paper's single full-size loss.
    matryoshka_dims: list[int] = field(default_factory=list)
    # --- optimisation
    lr: float = 1e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    max_grad_norm: float = 1.0
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    seed: int = 42
    # --- distributed (torchrun sets RANK/WORLD_SIZE)
    distributed: Literal["ddp", "fsdp"] = "ddp"
    # --- run
    output_dir: str = "runs/e5x"
    save_every: int = 100
    keep_checkpoints: int = 2
    resume: bool = True  # continue from the latest checkpoint in output_dir if one exists
    log_every: int = 1
    progress: bool = True
    # The sentence-transformers "query" prompt saved with the model.
    default_instruction: str = (
        "Given a web search query, retrieve relevant passages that answer the query"
    )

    def __post_init__(self) -> None:
        if isinstance(self.tiny_model, dict):
            self.tiny_model = _build(TinyModelConfig, self.tiny_model, "tiny_model")
        self.sources = [
            _build(Source, _registered(s, f"sources[{i}]"), f"sources[{i}]") if isinstance(s, dict) else s
            for i, s in enumerate(self.sources)
        ]

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
        try:
            cfg = cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        # Relative data paths are relative to the config file's directory... unless they
        # exist relative to the working directory (how people usually run the CLI).
        for i, s in enumerate(cfg.sources):
            if not Path(s.path).is_absolute() and not Path(s.path).exists():
                alt = path.parent / s.path
                if alt.exists():
                    cfg.sources[i] = dataclasses.replace(s, path=str(alt))
        return cfg

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _build(cls, data, None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, *, allow_missing: bool = False) -> list[SourceStats | None]:
        """Check everything that can be checked without loading a model; returns each
        source's row counts. A source without data yet (a registered dataset not prepared,
        or no file at its path) is an error, naming every unprepared dataset and how to
        prepare them, unless ``allow_missing`` (its stats are then None)."""
        from e5x.data.triples import DataError, check_source

        if not self.sources:
            raise ConfigError("no data sources: add at least one [[sources]] with a path or a dataset")
        for i, s in enumerate(self.sources):
            if not s.path:
                raise ConfigError(f"[sources[{i}]] needs a path (training triples) or a dataset (e5x data list)")
        unprepared = [s.dataset for s in self.sources if s.unprepared]
        if unprepared and not allow_missing:
            raise ConfigError(f"{len(unprepared)} dataset source(s) not prepared yet: {', '.join(unprepared)} "
                              f"(e5x data prepare CONFIG.toml fetches and converts them)")  # fmt: skip
        positive = {
            "batch_size": self.batch_size,
            "chunk_size": self.chunk_size,
            "max_length": self.max_length,
            "save_every": self.save_every,
            "log_every": self.log_every,
            "lora_r": self.lora_r,
            "keep_checkpoints": self.keep_checkpoints,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.chunk_tokens is not None and (isinstance(self.chunk_tokens, bool) or self.chunk_tokens < 1):
            raise ConfigError(f"chunk_tokens must be >= 1 (or unset), got {self.chunk_tokens}")
        if not self.infonce_chunk_mib > 0:
            raise ConfigError(f"infonce_chunk_mib must be > 0, got {self.infonce_chunk_mib}")
        if self.max_length < 2:
            raise ConfigError("max_length must be >= 2 (room for the EOS)")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        dims = self.matryoshka_dims
        if not isinstance(dims, list) or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1
                                                 for m in dims):
            raise ConfigError(f"matryoshka_dims must be a list of integers >= 1, got {dims!r}")
        if len(set(dims)) != len(dims):
            raise ConfigError(f"matryoshka_dims has duplicates: {dims}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.max_steps is None and self.epochs <= 0:
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")
        for key, allowed in (
            ("precision", ("auto", "bf16", "fp32")),
            ("padding_side", ("left", "right")),
            ("distributed", ("ddp", "fsdp")),
            ("infonce_mode", ("auto", "fused", "lean", "backward")),
            ("pooling", tuple(POOLINGS)),
        ):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        try:
            return [None if allow_missing and s.missing else check_source(s) for s in self.sources]
        except DataError as exc:
            raise ConfigError(str(exc)) from None


# Fields that cannot change what a run computes: where its outputs go, how often it logs and
# checkpoints. A resume compares every other field (fields added later included) with the
# checkpoint's and refuses a change that ``train(..., allow_config_change=[...])`` does not allow.
RESUME_FREE = frozenset({"output_dir", "resume", "save_every", "keep_checkpoints", "log_every", "progress"})


def _registered(source: dict[str, Any], where: str) -> dict[str, Any]:
    """A source naming a registered training set trains on its prepared triples, with the
    registry's ratio unless the config gives one (its rows carry the instruction)."""
    if "dataset" not in source:
        return source
    from e5x.data.public import prepared_path
    from e5x.data.registry import UnknownDataset, get

    if not isinstance(source["dataset"], str):
        raise ConfigError(f"[{where}] dataset must be a string, got {source['dataset']!r}")
    if source.get("path"):
        raise ConfigError(f"[{where}] give a path or a dataset, not both")
    try:
        ds = get(source["dataset"])
    except UnknownDataset as exc:
        raise ConfigError(f"[{where}] {exc}") from None
    if ds.kind != "train":
        raise ConfigError(f"[{where}] {ds.name} is an evaluation set, not a training set")
    return {"ratio": ds.ratio, "name": ds.name, **source, "dataset": ds.name, "path": str(prepared_path(ds.name))}


def _check_types(obj: Any, where: str | None) -> None:
    """Scalars must have their default's type (ints are accepted for floats)."""
    for f in fields(obj):
        default = f.default
        if default is dataclasses.MISSING or default is None:
            continue
        value = getattr(obj, f.name)
        if value is None and f.name in ("max_steps", "tokenizer"):
            continue
        expected: tuple[type, ...]
        if isinstance(default, bool):
            expected = (bool,)
        elif isinstance(default, int):
            expected = (int,)
        elif isinstance(default, float):
            expected = (int, float)
        elif isinstance(default, str):
            expected = (str,)
        else:
            continue
        if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
            prefix = f"[{where}] " if where else ""
            raise ConfigError(
                f"{prefix}{f.name} must be {expected[-1].__name__}, got {type(value).__name__} {value!r}"
            )


def _build(cls: type, data: dict[str, Any], where: str | None) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a table, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        prefix = f"[{where}] " if where else ""
        raise ConfigError(
            f"{prefix}unknown key(s) {unknown}; known keys are {sorted(known)}"
        )
    try:
        obj = cls(**data)
    except TypeError as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from None
    _check_types(obj, where)
    return obj
