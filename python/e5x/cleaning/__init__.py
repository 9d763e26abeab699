"""e5x.cleaning (``e5x.clean``): raw LLM responses -> validated, deduplicated training triples.

``clean(CleanConfig(inputs=[run_dir], out="triples.parquet"))`` runs the Rust validator
(``e5x.core``) over every answer of a synth run, drops exact duplicates, and writes
the triples as Parquet plus a rejection report (JSON) and a task-type/language mix chart (PNG).
The pipeline module is imported lazily so ``import e5x.cleaning.decontaminate`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["CleanConfig", "CleanReport", "clean"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        value = getattr(importlib.import_module("e5x.cleaning.pipeline"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'e5x.cleaning' has no attribute {name!r}")
