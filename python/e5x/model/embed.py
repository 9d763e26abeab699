"""Pooled embeddings ``[B, H]`` of a batch of token id lists: the entry points of training and
the benchmarks.

Drop-in for the training loop: ``embed_packed(model, seqs)`` takes the token id lists of
``e5x.model.text.encode`` and returns the pooled ``[B, H]`` embeddings in input order, the
same numbers as ``embed_padded`` (the padded reference) up to float rounding;
``embed_packed_inputs`` does the same for a padded ``{"input_ids", "attention_mask"}`` batch.
``embed_length_grouped`` is the fallback when packing is off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from e5x.model.decoder import packed_hidden_at
from e5x.model.packing import length_grouped_chunks, pack, pack_padded

if TYPE_CHECKING:
    import torch


def embed_packed(
    model: Any,
    sequences: Sequence[Sequence[int]],
    *,
    pooling: str = "last_token",
    normalize: bool = False,
    backend: str = "auto",
    trim_last_layer: bool = True,
    pad_to_multiple_of: int | None = None,
) -> torch.Tensor:
    """Pooled embeddings ``[B, H]`` (input order) of token id lists, from one packed forward.

    The drop-in for a padded forward + pooling: the same sequences give the same embeddings
    (``embed_padded``) up to rounding. ``normalize`` L2-normalises (the InfoNCE op
    normalises itself, so training leaves it off).
    """
    packed = pack(sequences, pad_to_multiple_of=pad_to_multiple_of)
    pooled = packed_hidden_at(model, packed, pooling=pooling, backend=backend, trim_last_layer=trim_last_layer)
    if normalize:
        import torch.nn.functional as F

        pooled = F.normalize(pooled.float(), dim=-1).to(pooled.dtype)
    return pooled


def embed_packed_inputs(
    model: Any,
    inputs: dict[str, torch.Tensor],
    *,
    pooling: str = "last_token",
    backend: str = "auto",
    trim_last_layer: bool = True,
) -> torch.Tensor:
    """``embed_packed`` for a padded ``{"input_ids", "attention_mask"}`` batch (any padding
    side): the drop-in for ``e5x.training.step.embed`` once ``enable_packing(model)`` ran, so it
    returns float32 like that function (the pooled rows are few; the cast is free)."""
    packed = pack_padded(inputs["input_ids"], inputs["attention_mask"])
    return packed_hidden_at(model, packed, pooling=pooling, backend=backend, trim_last_layer=trim_last_layer).float()


def embed_padded(
    model: Any,
    sequences: Sequence[Sequence[int]],
    *,
    pooling: str = "last_token",
    pad_id: int = 0,
    padding_side: str = "right",
    normalize: bool = False,
) -> torch.Tensor:
    """The padded reference: one padded forward and ``pooling``, ``[B, H]``."""
    import torch.nn.functional as F

    from e5x.model.pooling import get_pooling
    from e5x.model.text import pad

    device = next(model.parameters()).device
    ids, mask = pad(sequences, pad_id, padding_side)  # type: ignore[arg-type]
    ids, mask = ids.to(device), mask.to(device)
    out = model(input_ids=ids, attention_mask=mask, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    pooled = get_pooling(pooling).pool(hidden, mask)
    return F.normalize(pooled.float(), dim=-1).to(pooled.dtype) if normalize else pooled


def embed_length_grouped(
    model: Any,
    sequences: Sequence[Sequence[int]],
    *,
    max_tokens: int = 16384,
    pooling: str = "last_token",
    pad_id: int = 0,
    padding_side: str = "right",
    normalize: bool = False,
) -> torch.Tensor:
    """Padded forwards over length-sorted chunks (``length_grouped_chunks``), pooled rows put
    back in input order: the fallback when packing is off. Same batch, less padding."""
    import torch

    chunks = length_grouped_chunks([len(s) for s in sequences], max_tokens)
    parts = [
        embed_padded(
            model,
            [sequences[i] for i in c],
            pooling=pooling,
            pad_id=pad_id,
            padding_side=padding_side,
            normalize=normalize,
        )
        for c in chunks
    ]
    order = torch.tensor([i for c in chunks for i in c], device=parts[0].device)
    return torch.cat(parts, 0)[torch.argsort(order)]
