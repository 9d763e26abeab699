"""Text side of the recipe, shared by training and inference.

Queries carry the task instruction, documents are bare, and every sequence ends with
an EOS token whose last-layer hidden state is the embedding. e5x appends that EOS
itself: under transformers >= 5 the Mistral tokenizer silently ignores
``add_eos_token``, and a missing EOS quietly degrades the embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

QUERY_TEMPLATE = "Instruct: {instruction}\nQuery: {query}"

PaddingSide = Literal["left", "right"]


def format_query(query: str, instruction: str | None) -> str:
    """The E5-mistral query text; without an instruction the query is left bare."""
    if not instruction:
        return query
    return QUERY_TEMPLATE.format(instruction=instruction.strip(), query=query)


def eos_token_id(tokenizer: Any) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no eos_token_id; "
            "last-token pooling needs one (set tokenizer.eos_token)"
        )
    return int(eos)


def pad_token_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    # Decoder LLMs often ship without a pad token; pad positions are masked out anyway.
    return int(pad) if pad is not None else eos_token_id(tokenizer)


def encode(tokenizer: Any, texts: Sequence[str], max_length: int = 512) -> list[list[int]]:
    """Token ids of each text, truncated to ``max_length`` with the EOS always last."""
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    eos = eos_token_id(tokenizer)
    batch = tokenizer(
        list(texts),
        add_special_tokens=True,
        truncation=True,
        max_length=max_length,
        padding=False,
    )["input_ids"]
    out = []
    for ids in batch:
        ids = list(ids)
        # Drop an EOS the tokenizer may or may not have added, then make room for ours:
        # truncation must never cut the EOS off.
        if ids and ids[-1] == eos:
            ids.pop()
        out.append(ids[: max_length - 1] + [eos])
    return out


def pad(
    sequences: Sequence[Sequence[int]], pad_id: int, padding_side: PaddingSide = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists into ``(input_ids, attention_mask)`` long tensors."""
    import torch

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not sequences:
        raise ValueError("cannot pad an empty batch")
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        n = len(seq)
        cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
        input_ids[row, cols] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, cols] = 1
    return input_ids, mask


def tokenize(
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int = 512,
    padding_side: PaddingSide = "right",
) -> dict[str, torch.Tensor]:
    """Tokenize, append EOS, pad: the batch a model forward pass takes."""
    ids, mask = pad(encode(tokenizer, texts, max_length), pad_token_id(tokenizer), padding_side)
    return {"input_ids": ids, "attention_mask": mask}
