"""Turning (source, row) pairs into tokenised query/document tensors."""

from __future__ import annotations

import hashlib
import unicodedata
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

    ``query_groups`` [B, 2] (ids of row i's positive text and of its query text) and
    ``doc_groups`` [num_docs] (id of each document's text) let the loss drop false
    negatives: a document with the same normalised text as a row's positive or query
    (:func:`text_group_id`). None when the batch was built without them.
    """

    queries: dict[str, torch.Tensor]
    docs: dict[str, torch.Tensor]
    query_groups: torch.Tensor | None = None
    doc_groups: torch.Tensor | None = None

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
            None if self.query_groups is None else self.query_groups.to(device),
            None if self.doc_groups is None else self.doc_groups.to(device),
        )


def normalize_text(text: str) -> str:
    """The form under which two texts count as the same: Unicode NFKC, case folded,
    whitespace runs collapsed to one space, trimmed: what ``e5x.clean``'s deduplicator
    does with ``casefold=True`` (which exposes no per-text hash to share)."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_group_id(text: str) -> int:
    """63-bit id of a text's normalised form; equal on every process and run (unlike
    ``hash``), so ids from different ranks compare after an all-gather."""
    digest = hashlib.blake2b(normalize_text(text).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # >= 0: negative ids mean "no group"


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
    import torch

    seen: dict[str, int] = {}  # labels and public positives repeat: hash each text once

    def group_id(text: str) -> int:
        if text not in seen:
            seen[text] = text_group_id(text)
        return seen[text]

    queries, positives, negatives, query_ids = [], [], [], []
    for instruction, query, positive, negative in store.rows(pairs.tolist()):
        queries.append(format_query(query, instruction))
        positives.append(positive)
        # The bare query's id for every row: the task type is not in the triples, and a
        # document repeating the query verbatim is a false negative for symmetric tasks
        # (STS, bitext, duplicate questions) and practically never occurs in the others.
        query_ids.append(group_id(query))
        if negative is not None:
            negatives.append(negative)
    doc_ids = [group_id(t) for t in positives + negatives]
    positive_ids = doc_ids[: len(positives)]
    return Batch(
        tokenize(tokenizer, queries, max_length, padding_side),
        tokenize(tokenizer, positives + negatives, max_length, padding_side),
        torch.tensor(list(zip(positive_ids, query_ids)), dtype=torch.int64).reshape(len(queries), 2),
        torch.tensor(doc_ids, dtype=torch.int64),
    )
