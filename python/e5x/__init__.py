"""e5x: train text embedding models with LLMs, the E5-mistral way.

The public API is re-exported here lazily so that ``import e5x`` stays light:
torch, triton, transformers and openai are imported only by the stage that uses them.
"""

from __future__ import annotations

import importlib
from typing import Any

try:
    from importlib.metadata import version as _dist_version

    __version__ = _dist_version("e5x")
except Exception:  # running from a source tree without an installed distribution
    __version__ = "0.0.0+unknown"

# public name -> (module, attribute)
_LAZY: dict[str, tuple[str, str]] = {
    "synthesize": ("e5x.synth", "synthesize"),
    "SynthConfig": ("e5x.synth", "SynthConfig"),
    "clean": ("e5x.cleaning", "clean"),
    "CleanConfig": ("e5x.cleaning", "CleanConfig"),
    "train": ("e5x.training", "train"),
    "TrainConfig": ("e5x.training", "TrainConfig"),
    "evaluate": ("e5x.eval", "evaluate"),
    "EvalConfig": ("e5x.eval", "EvalConfig"),
    "Embedder": ("e5x.model", "Embedder"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'e5x' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
