"""``e5x.json``: how a saved model turns text into an embedding.

Written next to every model that ``e5x.train`` saves and read by ``e5x.Embedder``, so
inference applies exactly the pooling, instruction template and EOS rule of training.
``pooling`` names an entry of ``e5x.model.pooling.POOLINGS``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

from e5x.model.pooling import get_pooling
from e5x.model.text import QUERY_TEMPLATE

CONFIG_NAME = "e5x.json"


@dataclass(frozen=True)
class EmbeddingSpec:
    pooling: str = "last_token"
    normalize: bool = True
    query_template: str = QUERY_TEMPLATE
    max_length: int = 512
    append_eos: bool = True
    padding_side: Literal["left", "right"] = "right"
    # Leading dimensions trained as embeddings of their own (Matryoshka); any of them is a
    # valid Embedder(truncate_dim=...). Empty: only the full size was trained.
    matryoshka_dims: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        get_pooling(self.pooling)  # an unknown name fails where the spec is made or loaded

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> EmbeddingSpec:
        path = Path(directory) / CONFIG_NAME
        data = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; known keys are {sorted(known)}")
        data["matryoshka_dims"] = tuple(data.get("matryoshka_dims", ()))
        try:
            return cls(**data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
