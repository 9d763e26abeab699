"""One training step's forward/backward: embedding, the all-gather of documents, GradCache.

``embed`` is the only place that runs the model, so a packed (padding-free) forward can
replace it without touching the loss or the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from e5x.data.batch import Batch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> World:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()


def embed(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Last-layer hidden state at each sequence's EOS: ``[B, H]`` float32, not normalised."""
    from e5x.kernels import last_token_pool

    out = model(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
    )
    return last_token_pool(out.last_hidden_state, inputs["attention_mask"]).float()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather equal-shaped tensors; the backward sums every rank's gradient for ours."""

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
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank]


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
    sizes = [int(c.item()) for c in all_counts]
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
    masking: dict[str, torch.Tensor] = {}
    if groups is not None:
        masking = {"q_groups": groups[0], "d_groups": gather_ids(groups[1], world)[0]}
    losses = [
        info_nce(q_m, d_m, positive_index, positive_offset=offset, temperature=temperature, normalize=True,
                 **masking)
        for q_m, d_m in [(q, docs)] + [(q[:, :m].contiguous(), docs[:, :m].contiguous()) for m in matryoshka_dims]
    ]
    return losses[0] if len(losses) == 1 else torch.stack(losses).mean()


def _chunks(inputs: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    n = inputs["input_ids"].shape[0]
    out = []
    for start in range(0, n, size):
        chunk = {k: v[start : start + size] for k, v in inputs.items()}
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
    chunk_size: int,
    temperature: float,
    world: World = World(),
    autocast: Any = None,
    sync_chunks: int | None = None,
    embed_fn: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor] | None = None,
    matryoshka_dims: Sequence[int] = (),
    mask_false_negatives: bool = True,
) -> torch.Tensor:
    """Loss of one step and its gradients accumulated into the parameters' ``.grad``.

    Gradients are this rank's share (not yet averaged over ranks). When a side has more
    sequences than ``chunk_size``, GradCache runs: embeddings of all chunks without a
    graph, the loss and its gradient w.r.t. the embeddings, then each chunk again with a
    graph, back-propagating the cached embedding gradient. Peak activation memory is one
    chunk's, whatever the batch size; the gradients equal the full-batch ones.

    ``sync_chunks`` (FSDP only) pads the number of re-forwards so every rank runs the same
    number of collectives. ``embed_fn`` replaces ``embed`` (e.g. the packed forward).
    ``matryoshka_dims``: see ``contrastive_loss``. ``mask_false_negatives`` drops documents
    whose text equals a row's positive or query from its negatives (needs the batch's group
    ids, see ``Batch``; without them nothing is masked).
    """
    autocast = autocast or nullcontext
    groups = None
    if mask_false_negatives and batch.query_groups is not None and batch.doc_groups is not None:
        groups = (batch.query_groups, batch.doc_groups)
    embed = embed_fn or _embed
    sides = [batch.queries, batch.docs]
    if max(s["input_ids"].shape[0] for s in sides) <= chunk_size and sync_chunks is None:
        with autocast():
            q = embed(model, batch.queries)
            d = embed(model, batch.docs)
        loss = contrastive_loss(q, d, world, temperature, matryoshka_dims, groups)
        loss.backward()
        return loss.detach()

    device = batch.queries["input_ids"].device
    chunks = [_chunks(side, chunk_size) for side in sides]
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


def num_chunks(batch: Batch, chunk_size: int) -> int:
    return sum(-(-s["input_ids"].shape[0] // chunk_size) for s in (batch.queries, batch.docs))


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
