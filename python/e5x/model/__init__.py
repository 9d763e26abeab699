"""Models: text formatting with EOS, the saved-model spec, and (lazily) the Embedder."""

from __future__ import annotations

from typing import Any

from e5x.model.config import CONFIG_NAME, EmbeddingSpec
from e5x.model.text import QUERY_TEMPLATE, encode, format_query, pad, tokenize

__all__ = [
    "CONFIG_NAME",
    "QUERY_TEMPLATE",
    "EmbeddingSpec",
    "Embedder",
    "encode",
    "format_query",
    "pad",
    "tokenize",
]


def __getattr__(name: str) -> Any:
    if name == "Embedder":  # imports torch; keep `import e5x.model` light
        from e5x.model.embedder import Embedder

        return Embedder
    raise AttributeError(f"module 'e5x.model' has no attribute {name!r}")
