"""Padding-free training batches: pack every sequence of a step into one token stream.

A step of the recipe holds short queries (~24 tokens) and long documents (~180, up to 512).
Padded to their longest, more than half of the computed tokens are padding. Packing puts
all sequences end to end in one ``[1, T]`` stream with

- ``cu_seqlens`` boundaries (``[0, l0, l0+l1, ...]``, int32, the flash-attention layout),
- position ids that restart at 0 for every sequence (RoPE sees each one from its start),
- attention that never crosses a boundary (varlen attention; see ``e5x.model.attention``),
- pooling by boundary (``cu_seqlens[1:] - 1`` is each sequence's EOS, the last-token row;
  any pooling of ``e5x.model.pooling`` reads the stream through its ``pool_packed``).

This module holds the layout only: ``pack`` / ``pack_padded`` build a ``PackedBatch``, whose
``attention_kwargs`` hand the boundaries to the attention of every decoder layer, and
``length_grouped_chunks`` cuts the padding of padded forwards when packing is off. The decoder
runs over the stream in ``e5x.model.decoder``; ``e5x.model.embed`` holds the entry points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class PackedBatch:
    """Sequences laid end to end in one stream; see the module docstring."""

    input_ids: torch.Tensor  # [1, T] long
    position_ids: torch.Tensor  # [1, T] long, restarting at 0 per sequence
    cu_seqlens: torch.Tensor  # [N+1] int32, N = sequences (+1 when a tail pad segment exists)
    max_seqlen: int
    last_index: torch.Tensor  # [B] long, stream index of each sequence's last token
    lengths: list[int]  # the B real sequence lengths

    @property
    def num_sequences(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        """Tokens computed (real + tail padding)."""
        return int(self.input_ids.shape[1])

    @property
    def useful_tokens(self) -> int:
        return sum(self.lengths)

    def to(self, device: Any) -> PackedBatch:
        return PackedBatch(
            input_ids=self.input_ids.to(device, non_blocking=True),
            position_ids=self.position_ids.to(device, non_blocking=True),
            cu_seqlens=self.cu_seqlens.to(device, non_blocking=True),
            max_seqlen=self.max_seqlen,
            last_index=self.last_index.to(device, non_blocking=True),
            lengths=self.lengths,
        )

    def segment_bounds(self) -> list[int]:
        """``cu_seqlens`` as host integers, tail included, without a device sync: read from
        the tensor while it is on the CPU, else rebuilt from ``lengths`` (which ``pack`` and
        ``pack_padded`` keep consistent with it)."""
        if self.cu_seqlens.device.type == "cpu":
            return [int(x) for x in self.cu_seqlens.tolist()]
        bounds = [0]
        for n in self.lengths:
            bounds.append(bounds[-1] + n)
        if self.num_tokens > bounds[-1]:
            bounds.append(self.num_tokens)
        return bounds

    def attention_kwargs(self, backend: str = "auto") -> dict[str, Any]:
        """Keyword arguments that route a decoder layer's attention through the varlen path."""
        bounds = self.segment_bounds()
        return {
            "cu_seq_lens_q": self.cu_seqlens,
            "cu_seq_lens_k": self.cu_seqlens,
            "max_length_q": self.max_seqlen,
            "max_length_k": self.max_seqlen,
            "e5x_attn_backend": backend,
            "e5x_bounds": (bounds, bounds),  # host copy for the SDPA loop (no .tolist() sync)
        }


def pack(
    sequences: Sequence[Sequence[int]],
    *,
    pad_to_multiple_of: int | None = None,
    pad_id: int = 0,
) -> PackedBatch:
    """Pack token id lists into one stream (CPU tensors; move with ``.to(device)``).

    ``pad_to_multiple_of`` rounds the stream length up with a tail of ``pad_id`` tokens that
    form a segment of their own (never pooled, never attended to by real tokens); it keeps
    shapes stable for compiled kernels. Off by default: packing exists to avoid padding.
    """
    import torch

    if not sequences:
        raise ValueError("cannot pack an empty batch")
    lengths = []
    for i, seq in enumerate(sequences):
        if len(seq) == 0:
            raise ValueError(f"sequence {i} is empty; every sequence needs at least its EOS token")
        lengths.append(len(seq))
    total = sum(lengths)
    seg_lengths = list(lengths)
    if pad_to_multiple_of and pad_to_multiple_of > 1:
        tail = -total % pad_to_multiple_of
        if tail:
            seg_lengths.append(tail)
    stream = [int(t) for seq in sequences for t in seq]
    stream += [pad_id] * (sum(seg_lengths) - total)
    input_ids = torch.tensor(stream, dtype=torch.long).unsqueeze(0)
    position_ids = torch.cat([torch.arange(n, dtype=torch.long) for n in seg_lengths]).unsqueeze(0)
    cu = torch.zeros(len(seg_lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(seg_lengths, dtype=torch.int64), 0).to(torch.int32)
    last_index = cu[1 : len(lengths) + 1].to(torch.long) - 1
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        cu_seqlens=cu,
        max_seqlen=max(seg_lengths),
        last_index=last_index,
        lengths=lengths,
    )


def pack_padded(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> PackedBatch:
    """Pack an already padded batch (left or right padding) on its own device.

    ``input_ids[mask]`` is the packed stream in row order; one host sync reads the lengths.
    Lets a loop that collates padded tensors switch to packed forwards without re-collating.
    """
    import torch

    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
            "must be the same [batch, seq_len] shape"
        )
    mask = attention_mask.bool()
    lengths_t = mask.sum(1)
    lengths = lengths_t.tolist()
    if not lengths or min(lengths) == 0:
        raise ValueError("every row needs at least one token (its EOS) to be packed")
    stream = input_ids[mask].unsqueeze(0)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=input_ids.device)
    cu[1:] = torch.cumsum(lengths_t, 0).to(torch.int32)
    starts = torch.repeat_interleave(cu[:-1].long(), lengths_t, output_size=stream.shape[1])
    position_ids = (torch.arange(stream.shape[1], device=input_ids.device) - starts).unsqueeze(0)
    return PackedBatch(
        input_ids=stream,
        position_ids=position_ids,
        cu_seqlens=cu,
        max_seqlen=max(lengths),
        last_index=cu[1:].long() - 1,
        lengths=lengths,
    )


# ----------------------------------------------------------------------------- length grouping


def length_grouped_chunks(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices of the sequences of one step, sorted by length, cut into padded chunks whose
    padded size (rows x longest) stays within ``max_tokens``.

    The step's composition (and so its in-batch negatives) is unchanged; only the forward
    passes are regrouped, so each chunk pads to a length close to its members'. A single
    sequence longer than ``max_tokens`` still gets a chunk of its own.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    chunks: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = max(lengths[cur[0]], lengths[i]) if cur else lengths[i]  # sorted: cur[0] longest
        if cur and width * (len(cur) + 1) > max_tokens:
            chunks.append(cur)
            cur = []
        cur.append(i)
    if cur:
        chunks.append(cur)
    return chunks


def padding_share(lengths: Sequence[int], groups: Sequence[Sequence[int]] | None = None) -> float:
    """Share of computed tokens that are padding when each group pads to its longest."""
    groups = groups if groups is not None else [list(range(len(lengths)))]
    computed = sum(max(lengths[i] for i in g) * len(g) for g in groups if g)
    useful = sum(lengths[i] for g in groups for i in g)
    return 0.0 if computed == 0 else 1.0 - useful / computed
