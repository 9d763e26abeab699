"""One training step's forward/backward: embedding, the all-gather of documents, GradCache.

``embed`` is the only place that runs the model, so a packed (padding-free) forward can
replace it without touching the loss or the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from e5x.data.batch import Batch

_log = logging.getLogger("e5x.training")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> World:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()


def embed(model: Any, inputs: dict[str, torch.Tensor], pooling: str = "last_token") -> torch.Tensor:
    """Last-layer hidden states pooled by ``pooling`` (``e5x.model.pooling``; the default
    reads each sequence's EOS): ``[B, H]`` float32, not normalised."""
    from e5x.model.pooling import get_pooling

    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
    return get_pooling(pooling).pool(out.last_hidden_state, inputs["attention_mask"]).float()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather equal-shaped tensors; the backward sums every rank's gradient for ours
    with one reduce-scatter (each rank receives only its own slice: half the traffic of an
    all-reduce of the whole gathered gradient)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        ctx.rank = dist.get_rank()
        out = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(out, x.contiguous())
        return torch.stack(out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        world = grad.shape[0]
        mine = torch.empty_like(grad[0])
        if _REDUCE_SCATTER[0]:
            try:
                dist.reduce_scatter_tensor(mine, grad.view(world * grad.shape[1], *grad.shape[2:]))
                return mine
            except (RuntimeError, NotImplementedError, AttributeError) as exc:  # a backend without it
                if "out of memory" in str(exc).lower():
                    raise
                _REDUCE_SCATTER[0] = False
                _log.warning(
                    "e5x.train: reduce_scatter_tensor unavailable (%s: %s); the document "
                    "gather's backward all-reduces instead",
                    type(exc).__name__,
                    exc,
                )
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank]


_REDUCE_SCATTER = [True]  # cleared (and logged once) when the process group lacks it


def gather_documents(d: torch.Tensor, world: World) -> tuple[torch.Tensor, int]:
    """Every rank's documents, in rank order, with gradient; plus our first row's offset.

    Ranks may hold different numbers of documents (rows without a hard negative), so rows
    are padded to the largest count for the collective and the padding is cut off again.
    """
    if world.size == 1:
        return d, 0
    counts = torch.tensor([d.shape[0]], device=d.device)
    all_counts = [torch.zeros_like(counts) for _ in range(world.size)]
    dist.all_gather(all_counts, counts)
    # one device-to-host read for all ranks' counts (the slicing below needs them on the host)
    sizes = [int(c) for c in torch.cat(all_counts).tolist()]
    width = max(sizes)
    padded = torch.cat([d, d.new_zeros(width - d.shape[0], d.shape[1])]) if width > d.shape[0] else d
    stacked = _GatherWithGrad.apply(padded)
    gathered = torch.cat([stacked[r, : sizes[r]] for r in range(world.size)])
    return gathered, sum(sizes[: world.rank])


def gather_ids(ids: torch.Tensor, world: World) -> tuple[torch.Tensor, int]:
    """Every rank's 1-D integer ids in rank order (no gradient), and our first one's index;
    ranks may hold different counts."""
    if world.size == 1:
        return ids, 0
    counts = torch.tensor([ids.shape[0]], device=ids.device)
    all_counts = [torch.zeros_like(counts) for _ in range(world.size)]
    dist.all_gather(all_counts, counts)
    sizes = [int(c.item()) for c in all_counts]
    padded = torch.cat([ids, ids.new_full((max(sizes) - ids.shape[0],), -1)])
    out = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(out, padded.contiguous())
    return torch.cat([out[r][: sizes[r]] for r in range(world.size)]), sum(sizes[: world.rank])


def masked_negatives(batch: Batch, world: World = World()) -> int:
    """How many (query, document) pairs of this rank's queries the false-negative mask
    removes, counting documents of every rank (a collective when world.size > 1)."""
    from e5x.kernels import count_false_negatives

    if batch.query_groups is None or batch.doc_groups is None:
        return 0
    doc_groups, offset = gather_ids(batch.doc_groups, world)
    positive = torch.arange(batch.num_queries, device=doc_groups.device) + offset
    return count_false_negatives(batch.query_groups, doc_groups, positive)


def contrastive_loss(
    q: torch.Tensor,
    d: torch.Tensor,
    world: World,
    temperature: float,
    matryoshka_dims: Sequence[int] = (),
    groups: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """InfoNCE of this rank's queries against all ranks' documents (positives first).

    ``groups`` = (query ids [Bq, 2], this rank's document ids [Bd]) removes false negatives
    from each query's softmax (``e5x.kernels.info_nce``); document ids are gathered with
    the documents.

    With ``matryoshka_dims`` (Matryoshka representation learning, Kusupati et al. 2022) the
    loss is the mean of the InfoNCE of the full embeddings and of their first m dimensions,
    renormalised, for each m: every prefix becomes an embedding of its own.
    """
    from e5x.kernels import info_nce

    docs, offset = gather_documents(d, world)
    positive_index = torch.arange(q.shape[0], device=q.device)
    masking: dict[str, Any] = {}
    if groups is not None:
        masking = {"q_groups": groups[0], "d_groups": gather_ids(groups[1], world)[0]}
    losses = [
        info_nce(q_m, d_m, positive_index, positive_offset=offset, temperature=temperature, normalize=True, **masking)
        for q_m, d_m in [(q, docs)] + [(q[:, :m].contiguous(), docs[:, :m].contiguous()) for m in matryoshka_dims]
    ]
    return losses[0] if len(losses) == 1 else torch.stack(losses).mean()


def chunk_bounds(
    lengths: Sequence[int],
    chunk_size: int | None = None,
    chunk_tokens: int | None = None,
    *,
    packed: bool = False,
) -> list[tuple[int, int]]:
    """Consecutive row ranges ``[start, end)`` for GradCache: each holds at most
    ``chunk_size`` sequences and costs at most ``chunk_tokens`` tokens (real tokens when the
    forward is ``packed``, else rows x the longest row: what a padded forward computes). A
    single row over the budget is a chunk of its own. None means no limit of that kind."""
    out: list[tuple[int, int]] = []
    start, longest, total = 0, 0, 0
    for i, n in enumerate(lengths):
        rows = i - start + 1
        cost = total + n if packed else rows * max(longest, n)
        over = (chunk_size is not None and rows > chunk_size) or (chunk_tokens is not None and cost > chunk_tokens)
        if over and i > start:
            out.append((start, i))
            start, longest, total = i, 0, 0
        longest, total = max(longest, n), total + n
    if len(lengths) > start:
        out.append((start, len(lengths)))
    return out


def _row_lengths(inputs: dict[str, torch.Tensor]) -> list[int]:
    return [int(n) for n in inputs["attention_mask"].sum(dim=1).tolist()]  # one host read per side


def _side_bounds(
    inputs: dict[str, torch.Tensor], chunk_size: int | None, chunk_tokens: int | None, packed: bool
) -> list[tuple[int, int]]:
    n = int(inputs["input_ids"].shape[0])
    if chunk_tokens is None:  # by count alone: no need to read the lengths
        size = chunk_size or n
        return [(i, min(i + size, n)) for i in range(0, n, size)]
    return chunk_bounds(_row_lengths(inputs), chunk_size, chunk_tokens, packed=packed)


def _chunks(inputs: dict[str, torch.Tensor], bounds: int | list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
    if isinstance(bounds, int):  # a plain sequence count
        n = inputs["input_ids"].shape[0]
        bounds = [(i, min(i + bounds, n)) for i in range(0, n, bounds)]
    out = []
    for start, end in bounds:
        chunk = {k: v[start:end] for k, v in inputs.items()}
        # Trim columns that are padding in every row of this chunk (cheaper forwards);
        # works for both padding sides since pooling reads the attention mask.
        cols = chunk["attention_mask"].any(dim=0).nonzero()
        lo, hi = int(cols.min()), int(cols.max()) + 1
        out.append({k: v[:, lo:hi] for k, v in chunk.items()})
    return out


class _RngState:
    """The RNG state before a chunk's no-grad forward, to replay identical dropout."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextmanager
    def replay(self) -> Iterator[None]:
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def forward_backward(
    model: Any,
    batch: Batch,
    *,
    chunk_size: int | None,
    temperature: float,
    chunk_tokens: int | None = None,
    packed_cost: bool | None = None,
    world: World = World(),
    autocast: Any = None,
    sync_chunks: int | None = None,
    embed_fn: Callable[..., torch.Tensor] | None = None,
    matryoshka_dims: Sequence[int] = (),
    mask_false_negatives: bool = True,
    pooling: str = "last_token",
) -> torch.Tensor:
    """Loss of one step and its gradients accumulated into the parameters' ``.grad``.

    Gradients are this rank's share (not yet averaged over ranks). When a side does not fit
    one chunk (more than ``chunk_tokens`` tokens or ``chunk_size`` sequences; None: no limit
    of that kind), GradCache runs: embeddings of all chunks without a graph, the loss and its
    gradient w.r.t. the embeddings, then each chunk again with a graph, back-propagating the
    cached embedding gradient. Peak activation memory is one chunk's, whatever the batch
    size; the gradients equal the full-batch ones. Tokens count as the forward computes
    them: real tokens with ``packed_cost`` (default: when ``embed_fn`` is given, i.e. the
    packed forward), else rows x the longest row of the chunk.

    ``sync_chunks`` (FSDP only) pads the number of re-forwards so every rank runs the same
    number of collectives. ``embed_fn`` replaces ``embed`` (e.g. the packed forward); both are
    called as ``embed(model, inputs, pooling=pooling)``, ``pooling`` naming an
    ``e5x.model.pooling`` entry.
    ``matryoshka_dims``: see ``contrastive_loss``. ``mask_false_negatives`` drops documents
    whose text equals a row's positive or query from its negatives (needs the batch's group
    ids, see ``Batch``; without them nothing is masked).
    """
    autocast = autocast or nullcontext
    groups = None
    if mask_false_negatives and batch.query_groups is not None and batch.doc_groups is not None:
        groups = (batch.query_groups, batch.doc_groups)
    embed = partial(embed_fn or _embed, pooling=pooling)
    sides = [batch.queries, batch.docs]
    packed = embed_fn is not None if packed_cost is None else packed_cost
    bounds = [_side_bounds(side, chunk_size, chunk_tokens, packed) for side in sides]
    if all(len(b) <= 1 for b in bounds) and sync_chunks is None:
        with autocast():
            q = embed(model, batch.queries)
            d = embed(model, batch.docs)
        loss = contrastive_loss(q, d, world, temperature, matryoshka_dims, groups)
        loss.backward()
        return loss.detach()

    device = batch.queries["input_ids"].device
    chunks = [_chunks(side, b) for side, b in zip(sides, bounds)]
    states: list[list[_RngState]] = [[], []]
    cached: list[torch.Tensor] = []
    with torch.no_grad():
        for s, side_chunks in enumerate(chunks):
            embs = []
            for chunk in side_chunks:
                states[s].append(_RngState(device))
                with autocast():
                    embs.append(embed(model, chunk))
            cached.append(torch.cat(embs).requires_grad_(True))
        if sync_chunks is not None:
            # FSDP: every forward all-gathers parameters, so all ranks must run as many.
            for _ in range(sum(map(len, chunks)), sync_chunks):
                with autocast():
                    embed(model, _dummy(batch))
    loss = contrastive_loss(cached[0], cached[1], world, temperature, matryoshka_dims, groups)
    loss.backward()
    done = 0
    for s, side_chunks in enumerate(chunks):
        grads = cached[s].grad.split([c["input_ids"].shape[0] for c in side_chunks])  # type: ignore[union-attr]
        for chunk, state, grad in zip(side_chunks, states[s], grads):
            with state.replay(), autocast():
                e = embed(model, chunk)
            e.backward(grad)
            done += 1
    if sync_chunks is not None:
        # FSDP: each forward/backward is a collective; ranks with fewer chunks run
        # zero-weighted dummies so nobody waits forever.
        for _ in range(done, sync_chunks):
            with autocast():
                e = embed(model, _dummy(batch))
            (e.sum() * 0.0).backward()
    return loss.detach()


_embed = embed


def _dummy(batch: Batch) -> dict[str, torch.Tensor]:
    ids = batch.queries["input_ids"][:1, -1:]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def num_chunks(batch: Batch, chunk_size: int | None, chunk_tokens: int | None = None, packed: bool = False) -> int:
    """GradCache forwards ``forward_backward`` runs for this batch (FSDP's ``sync_chunks``)."""
    return sum(len(_side_bounds(s, chunk_size, chunk_tokens, packed)) for s in (batch.queries, batch.docs))


def average_gradients(params: list[torch.nn.Parameter], world: World) -> None:
    """DDP's job, done once per step after all GradCache backwards: mean over ranks."""
    if world.size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world.size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n
