"""Training: ``e5x.train(config)`` runs the E5-mistral recipe (see ``e5x.train.loop``)."""

from __future__ import annotations

from typing import Any

from e5x.train.config import ConfigError, TrainConfig

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "TrainingDiverged", "train"]


def __getattr__(name: str) -> Any:
    # The loop imports torch lazily inside ``train``; the module itself is light, but keep
    # the names resolvable without importing it at package import.
    if name in ("train", "TrainResult", "TrainingDiverged"):
        from e5x.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'e5x.train' has no attribute {name!r}")
