"""Every pooling of e5x: a sequence's final hidden states -> one embedding.

``POOLINGS`` names each pooling once. The Embedder (inference), the train step (padded
forwards), ``e5x.model.decoder`` (packed forwards), ``TrainConfig.pooling`` and export
(``e5x.json`` and the sentence-transformers ``1_Pooling/config.json``) all look poolings up
here, so a pooling is added by one entry in this module and its test.

- ``last_token`` (the recipe, the default): the hidden state at each sequence's last real
  token, the EOS that ``e5x.model.text.encode`` appends. The mask decides which token that
  is, so left and right padding give the same rows.
- ``mean``: the mean over each sequence's real tokens (instruction and EOS included, as
  sentence-transformers' ``include_prompt``); the paper's pooling ablation.
- ``cls``: the first real token (the [CLS] of BERT-style encoders).

Each pooling reads two layouts: padded (hidden ``[B, L, H]`` + attention mask ``[B, L]``, either
padding side) and packed (hidden ``[T, H]`` of one stream, see ``PackedBatch``). Gathers keep
the hidden states' dtype; ``mean`` sums in float32 (float64 for float64 input) and returns that.

Training and the fused kernels: ``last_token`` gathers with ``e5x.kernels.last_token_pool``
(Triton on CUDA) and the loss, ``e5x.kernels.info_nce``, fuses L2 normalisation with InfoNCE.
Poolings without a kernel (``mean``, ``cls``) pool in torch here, then take the same loss.
Pooling is not fused into the loss (``e5x.kernels.pooled_info_nce``): that op needs the hidden
states of the whole batch at once, and GradCache exists never to hold them; it embeds chunk by
chunk without a graph, takes the loss over the cached embeddings, then re-runs each chunk
with the embeddings' gradient, so the loss only ever sees pooled rows. Packed forwards do
the cheap part of that fusion for ``last_token_only`` poolings: the last layer and the final
norm run only at the pooled rows (``packed_hidden_at``); ``mean`` needs every token's final
state, so its packed forward runs the whole last layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from e5x.model.packing import PackedBatch

# Every mode key of a sentence-transformers Pooling config; export sets one of them.
SENTENCE_TRANSFORMERS_MODES = (
    "pooling_mode_cls_token",
    "pooling_mode_mean_tokens",
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
)


@dataclass(frozen=True)
class Pooling:
    name: str
    # (hidden [B, L, H], attention_mask [B, L]) -> [B, H]
    pool: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    # (hidden [T, H] of a packed stream, its PackedBatch) -> [B, H], input order
    pool_packed: Callable[[torch.Tensor, PackedBatch], torch.Tensor]
    # Reads nothing but each sequence's last token: the appended EOS is what it pools (so a
    # model without e5x.json gets an EOS appended), and a packed forward may compute the
    # last layer at those rows only (the last token attends to its whole sequence).
    last_token_only: bool
    sentence_transformers_mode: str  # the key of SENTENCE_TRANSFORMERS_MODES it sets


def _accumulator(hidden: torch.Tensor) -> torch.dtype:
    import torch

    return torch.promote_types(hidden.dtype, torch.float32)


def _last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    from e5x.kernels import last_token_pool

    return last_token_pool(hidden, mask)


def _last_token_packed(hidden: torch.Tensor, packed: PackedBatch) -> torch.Tensor:
    return hidden.index_select(0, packed.last_index)


def _mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(_accumulator(hidden))
    # an all-padding row pools to zeros instead of 0/0
    return (hidden.to(m.dtype) * m).sum(1) / m.sum(1).clamp_min(1.0)


def _mean_packed(hidden: torch.Tensor, packed: PackedBatch) -> torch.Tensor:
    import torch

    lengths = torch.tensor(packed.lengths)
    segment = torch.repeat_interleave(torch.arange(len(packed.lengths)), lengths).to(hidden.device)
    n_real = segment.shape[0]  # a tail pad segment (pad_to_multiple_of) is no sequence
    dtype = _accumulator(hidden)
    sums = hidden.new_zeros((len(packed.lengths), hidden.shape[1]), dtype=dtype)
    sums = sums.index_add(0, segment, hidden[:n_real].to(dtype))
    return sums / lengths.to(device=hidden.device, dtype=dtype).unsqueeze(1)


def _cls(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    import torch

    first = mask.long().argmax(dim=1)  # the first real token, under either padding side
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), first.to(hidden.device)]


def _cls_packed(hidden: torch.Tensor, packed: PackedBatch) -> torch.Tensor:
    starts = packed.cu_seqlens[: packed.num_sequences].to(device=hidden.device, dtype=packed.last_index.dtype)
    return hidden.index_select(0, starts)


POOLINGS: dict[str, Pooling] = {
    p.name: p
    for p in (
        Pooling("last_token", _last_token, _last_token_packed, True, "pooling_mode_lasttoken"),
        Pooling("mean", _mean, _mean_packed, False, "pooling_mode_mean_tokens"),
        Pooling("cls", _cls, _cls_packed, False, "pooling_mode_cls_token"),
    )
}


def get_pooling(name: str) -> Pooling:
    """The registered pooling called ``name``; any other name is a one-line ValueError."""
    try:
        return POOLINGS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown pooling {name!r}; known poolings: {', '.join(POOLINGS)}") from None


def sentence_transformers_config(name: str, hidden_size: int) -> dict[str, Any]:
    """``1_Pooling/config.json`` for pooling ``name``: its mode on, every other mode off."""
    mode = get_pooling(name).sentence_transformers_mode
    return {
        "word_embedding_dimension": hidden_size,
        **{key: key == mode for key in SENTENCE_TRANSFORMERS_MODES},
        "include_prompt": True,
    }


def from_sentence_transformers(config: dict[str, Any]) -> str | None:
    """The registered pooling a sentence-transformers Pooling config turns on, if any."""
    return next((p.name for p in POOLINGS.values() if config.get(p.sentence_transformers_mode)), None)


__all__ = ["POOLINGS", "Pooling", "from_sentence_transformers", "get_pooling", "sentence_transformers_config"]
