"""Turning (source, row) pairs into tokenised query/document tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from e5x.data.triples import TripleStore
from e5x.model.text import PaddingSide, format_query, tokenize

if TYPE_CHECKING:
    import torch


@dataclass
class Batch:
    """One rank's share of a step.

    Documents are laid out ``[positive_0 .. positive_{B-1}, negatives present...]``: query
    i's positive is document i, and every other document (including other ranks' after the
    all-gather) is a negative for it. Rows without a hard negative simply add none.
    """

    queries: dict[str, torch.Tensor]
    docs: dict[str, torch.Tensor]

    @property
    def num_queries(self) -> int:
        return int(self.queries["input_ids"].shape[0])

    @property
    def num_docs(self) -> int:
        return int(self.docs["input_ids"].shape[0])

    @property
    def num_tokens(self) -> int:
        """Real (non-pad) tokens, for tokens/s."""
        return int(self.queries["attention_mask"].sum()) + int(self.docs["attention_mask"].sum())

    def to(self, device: Any) -> Batch:
        return Batch(
            {k: v.to(device) for k, v in self.queries.items()},
            {k: v.to(device) for k, v in self.docs.items()},
        )


def shard(pairs: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's contiguous slice of a global batch (batch size divisible by world size)."""
    n = len(pairs)
    if n % world_size:
        raise ValueError(f"global batch {n} is not divisible by world size {world_size}")
    per = n // world_size
    return pairs[rank * per : (rank + 1) * per]


def collate(
    store: TripleStore,
    pairs: np.ndarray,
    tokenizer: Any,
    max_length: int = 512,
    padding_side: PaddingSide = "right",
) -> Batch:
    queries, positives, negatives = [], [], []
    for instruction, query, positive, negative in store.rows(pairs.tolist()):
        queries.append(format_query(query, instruction))
        positives.append(positive)
        if negative is not None:
            negatives.append(negative)
    return Batch(
        tokenize(tokenizer, queries, max_length, padding_side),
        tokenize(tokenizer, positives + negatives, max_length, padding_side),
    )
