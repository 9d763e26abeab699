"""``TrainConfig``: the whole recipe as one typed dataclass, loadable from TOML.

Defaults are the paper's (E5-mistral-7b-instruct). It is loaded and validated by
``e5x.config.load`` like every stage config: unknown keys are errors that name the file
and the field, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Lt

from e5x.config import ConfigError, load
from e5x.data.triples import Source, SourceStats
from e5x.model.loading import LORA_TARGETS, TinyModelConfig
from e5x.model.pooling import POOLINGS

__all__ = ["RESUME_FREE", "ConfigError", "TrainConfig"]

AtLeast1 = Annotated[int, Ge(1)]


@dataclass
class TrainConfig:
    # --- model
    model: str = "mistralai/Mistral-7B-v0.1"
    tokenizer: str | None = None  # defaults to `model`
    tiny_model: TinyModelConfig | None = None  # build a random model instead of loading one
    lora_r: AtLeast1 = 16
    lora_alpha: int = 32
    lora_dropout: Annotated[float, Ge(0), Lt(1)] = 0.1
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    gradient_checkpointing: bool = True
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on GPU
    packing: bool = False  # padding-free packed forwards (e5x.model.packing)
    # With packing: the last `checkpoint_keep` layers skip activation checkpointing and the
    # `checkpoint_save_matmuls` layers before them keep their matmul outputs (e5x.model.fast).
    checkpoint_keep: Annotated[int, Ge(0)] = 0
    checkpoint_save_matmuls: Annotated[int, Ge(0)] = 0
    liger: bool = False  # liger-kernel's fused RMSNorm/SwiGLU/RoPE (GPU, when installed)
    # --- kernels (e5x.kernels.configure; E5X_INFONCE_MODE / E5X_INFONCE_CHUNK_MIB /
    # E5X_AUTOTUNE / E5X_FLEX_COMPILE override them; the effective values go to
    # kernels.json in output_dir)
    infonce_mode: Literal["auto", "fused", "lean", "backward"] = "auto"
    infonce_chunk_mib: Annotated[float, Gt(0)] = 1024.0  # memory budget of the InfoNCE gradient chunks
    kernel_autotune: bool = True  # tune the Triton tile configs (else the first config)
    flex_compile: bool = True  # torch.compile FlexAttention (packed backend "flex", CUDA)
    # --- data
    # [[sources]] tables: path (Parquet triples) or dataset (a registered training set, e5x
    # data list), ratio (share of an epoch), instruction (replaces the rows'), name
    sources: list[Source] = field(default_factory=list)
    max_length: Annotated[int, Ge(2)] = 512  # tokens per text, EOS included
    padding_side: Literal["left", "right"] = "right"
    task_homogeneous: bool = False
    # --- loss and batch
    # How hidden states become an embedding (e5x.model.pooling; "mean" is the paper's
    # ablation); saved in the model's e5x.json so inference pools the same way.
    pooling: str = "last_token"
    batch_size: AtLeast1 = 2048  # global queries per step, across all ranks
    chunk_size: AtLeast1 = 32  # GradCache chunk (sequences per forward); >= batch disables it
    # GradCache chunk by tokens per forward instead (real tokens with packing, rows x
    # longest row without); when set, chunk_size is not used. A rank's batch within the
    # budget runs one forward per side and no GradCache at all.
    chunk_tokens: AtLeast1 | None = None
    temperature: Annotated[float, Gt(0)] = 0.02  # of the InfoNCE softmax
    # Drop in-batch false negatives: a document whose normalised text equals a row's
    # positive or query is no negative for that row (labels repeat across classification
    # rows; public sets repeat positives). The count per step is logged as masked_negatives.
    mask_false_negatives: bool = True
    # Matryoshka: the loss also trains these leading dimensions as embeddings of their own
    # (e.g. [1024, 256, 64] for a 4096-wide model); [] = the paper's single full-size loss.
    matryoshka_dims: list[AtLeast1] = field(default_factory=list)
    # --- optimisation
    lr: Annotated[float, Ge(0)] = 1e-4  # peak learning rate (linear warmup, then linear decay); 0 freezes
    weight_decay: Annotated[float, Ge(0)] = 0.1
    warmup_steps: Annotated[int, Ge(0)] = 100
    max_grad_norm: Annotated[float, Ge(0)] = 1.0
    epochs: float = 1.0  # passes over the data mix, unless max_steps is set
    max_steps: AtLeast1 | None = None  # overrides epochs
    seed: int = 42
    # --- distributed (torchrun sets RANK/WORLD_SIZE)
    distributed: Literal["ddp", "fsdp"] = "ddp"
    # --- run
    output_dir: str = "runs/e5x"  # checkpoints, metrics and the final model
    save_every: AtLeast1 = 100  # steps between checkpoints
    keep_checkpoints: AtLeast1 = 2
    resume: bool = True  # continue from the latest checkpoint in output_dir if one exists
    log_every: AtLeast1 = 1  # steps between metrics records
    progress: bool = True  # a progress bar on stderr
    # The sentence-transformers "query" prompt saved with the model.
    default_instruction: str = "Given a web search query, retrieve relevant passages that answer the query"

    def __post_init__(self) -> None:
        # TrainConfig(tiny_model={...}, sources=[{...}]) in Python: the tables become their
        # configs (``load`` hands over configs already).
        if isinstance(self.tiny_model, dict):
            self.tiny_model = load(TinyModelConfig, self.tiny_model, where="tiny_model")
        self.sources = [
            load(Source, _registered(s, i), where=f"sources[{i}]") if isinstance(s, dict) else s
            for i, s in enumerate(self.sources)
        ]

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        return load(cls, path)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return load(cls, data)

    @classmethod
    def from_table(cls, table: dict[str, Any], path: Path | None) -> dict[str, Any]:
        """Sources naming a registered dataset train on its prepared triples; relative data
        paths of a TOML file are relative to its directory, unless they exist relative to
        the working directory (how people usually run the CLI)."""
        sources = table.get("sources")
        if not isinstance(sources, list):
            return table
        resolved = []
        for i, s in enumerate(sources):
            if isinstance(s, dict):
                s = _registered(s, i)
                p = s.get("path")
                if path is not None and isinstance(p, str) and p and not Path(p).is_absolute() and not Path(p).exists():
                    if (path.parent / p).exists():
                        s = {**s, "path": str(path.parent / p)}
            resolved.append(s)
        return {**table, "sources": resolved}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """What fields require of each other (types and ranges are checked before)."""
        if len(set(self.matryoshka_dims)) != len(self.matryoshka_dims):
            raise ConfigError(f"has duplicates: {self.matryoshka_dims}", field="matryoshka_dims")
        if self.max_steps is None and self.epochs <= 0:
            raise ConfigError(f"must be > 0 (or set max_steps), got {self.epochs}", field="epochs")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"must be one of {'|'.join(POOLINGS)}, got {self.pooling!r}", field="pooling")

    def validate(self, *, allow_missing: bool = False) -> list[SourceStats | None]:
        """Check everything that can be checked without loading a model: every field
        (``e5x.config.load``), then the data; returns each source's row counts. A source
        without data yet (a registered dataset not prepared, or no file at its path) is an
        error, naming every unprepared dataset and how to prepare them, unless
        ``allow_missing`` (its stats are then None)."""
        from e5x.data.triples import DataError, check_source

        load(TrainConfig, self)
        if not self.sources:
            raise ConfigError("no data sources: add at least one [[sources]] with a path or a dataset")
        for i, s in enumerate(self.sources):
            if not s.path:
                raise ConfigError(f"[sources[{i}]] needs a path (training triples) or a dataset (e5x data list)")
        unprepared = [s.dataset for s in self.sources if s.dataset and s.unprepared]
        if unprepared and not allow_missing:
            raise ConfigError(f"{len(unprepared)} dataset source(s) not prepared yet: {', '.join(unprepared)} "
                              f"(e5x data prepare CONFIG.toml fetches and converts them)")  # fmt: skip
        try:
            return [None if allow_missing and s.missing else check_source(s) for s in self.sources]
        except DataError as exc:
            raise ConfigError(str(exc)) from None


# Fields that cannot change what a run computes: where its outputs go, how often it logs and
# checkpoints. A resume compares every other field (fields added later included) with the
# checkpoint's and refuses a change that ``train(..., allow_config_change=[...])`` does not allow.
RESUME_FREE = frozenset({"output_dir", "resume", "save_every", "keep_checkpoints", "log_every", "progress"})


def _registered(source: dict[str, Any], index: int) -> dict[str, Any]:
    """A source naming a registered training set trains on its prepared triples, with the
    registry's ratio unless the config gives one (its rows carry the instruction)."""
    if "dataset" not in source:
        return source
    from e5x.data.public import prepared_path
    from e5x.data.registry import UnknownDataset, get

    where = f"sources[{index}].dataset"
    if not isinstance(source["dataset"], str):
        return source  # validation names the wrong type
    if source.get("path"):
        raise ConfigError("give a path or a dataset, not both", field=where)
    try:
        ds = get(source["dataset"])
    except UnknownDataset as exc:
        raise ConfigError(str(exc), field=where) from None
    if ds.kind != "train":
        raise ConfigError(f"{ds.name} is an evaluation set, not a training set", field=where)
    return {"ratio": ds.ratio, "name": ds.name, **source, "dataset": ds.name, "path": str(prepared_path(ds.name))}
