"""The training step: padding sides, GradCache equivalence, 2-process gloo equivalence."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from _tiny import tiny_model, tiny_tokenizer
from e5x.data.batch import Batch
from e5x.model.loading import apply_lora
from e5x.model.text import format_query, tokenize
from e5x.training.step import World, average_gradients, embed, forward_backward

QUERIES = [
    format_query(f"code {c}", "Find the code")
    for c in ["abcd", "qzx", "mnopqrst", "ab", "kkkk", "lorem ipsum dolor", "zz", "hello there"]
]
DOCS = [
    f"the code {c} is here" for c in ["abcd", "qzx", "mnopqrst", "ab", "kkkk", "lorem ipsum dolor", "zz", "hello there"]
]
NEGS = ["the code xyz is here", None, "nothing", "the code ba is not here", None, "x", "y y y", None]


pytestmark = pytest.mark.usefixtures("one_thread")


def lora_model(dropout: float = 0.0, checkpointing: bool = True):
    torch.manual_seed(0)
    model = apply_lora(tiny_model(), dropout=dropout, gradient_checkpointing=checkpointing)
    # LoRA B starts at zero, which would make every lora_A gradient zero: perturb it.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def make_batch(rows: range, side: str = "right") -> Batch:
    tok = tiny_tokenizer()
    docs = [DOCS[i] for i in rows] + [NEGS[i] for i in rows if NEGS[i] is not None]
    return Batch(tokenize(tok, [QUERIES[i] for i in rows], 64, side), tokenize(tok, docs, 64, side))


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", ["mistral", "llama"])
def test_left_and_right_padding_give_same_embeddings(arch: str) -> None:
    from dataclasses import replace

    from _tiny import TINY

    torch.manual_seed(0)
    model = apply_lora(tiny_model(replace(TINY, arch=arch))).eval()
    tok = tiny_tokenizer()
    with torch.no_grad():
        right = embed(model, tokenize(tok, QUERIES + DOCS, 64, "right"))
        left = embed(model, tokenize(tok, QUERIES + DOCS, 64, "left"))
        alone = embed(model, tokenize(tok, QUERIES[:1], 64, "right"))
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone[0], right[0], atol=1e-5, rtol=1e-4)  # padding has no effect


@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_grad_cache_equals_full_batch(chunk: int) -> None:
    batch = make_batch(range(8))
    model = lora_model()
    full_loss = forward_backward(model, batch, chunk_size=1000, temperature=0.02)
    full = grads(model)
    model.zero_grad(set_to_none=True)
    cached_loss = forward_backward(model, batch, chunk_size=chunk, temperature=0.02)
    cached = grads(model)
    torch.testing.assert_close(cached_loss, full_loss, atol=1e-5, rtol=1e-5)
    assert any(g.abs().sum() > 0 for n, g in full.items() if "lora_A" in n)
    for name in full:
        torch.testing.assert_close(cached[name], full[name], atol=1e-5, rtol=1e-4, msg=name)


def test_grad_cache_replays_dropout() -> None:
    # With LoRA dropout on, the re-forward must see the same dropout masks as the cached
    # forward; otherwise the cached embedding gradient would not match the graph.
    batch = make_batch(range(6))
    model = lora_model(dropout=0.3)
    torch.manual_seed(5)
    a_loss = forward_backward(model, batch, chunk_size=2, temperature=0.02)
    a = grads(model)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    b_loss = forward_backward(model, batch, chunk_size=2, temperature=0.02)
    torch.testing.assert_close(a_loss, b_loss)
    for name, g in grads(model).items():
        torch.testing.assert_close(g, a[name])
    # and they are the gradients of the loss under those same masks: a directional
    # finite-difference check (the seed fixes the masks of both evaluations).
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.sqrt(sum((a[n] ** 2).sum() for n in names))
    eps = 1e-3
    with torch.no_grad():
        for p, n in zip(params, names):
            p.add_(a[n] / norm, alpha=eps)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    up = forward_backward(model, batch, chunk_size=2, temperature=0.02)
    slope = float(up - a_loss) / eps
    assert slope == pytest.approx(float(norm), rel=0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out: str, strategy: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        model = lora_model()
        per = 8 // world_size
        batch = make_batch(range(rank * per, (rank + 1) * per))
        world = World.current()
        if strategy == "fsdp":
            from e5x.training.loop import _fully_shard
            from e5x.training.step import num_chunks

            _fully_shard(model)
            n = torch.tensor([num_chunks(batch, 3)])
            dist.all_reduce(n, op=dist.ReduceOp.MAX)  # as the loop does
            loss = forward_backward(model, batch, chunk_size=3, temperature=0.02, world=world, sync_chunks=int(n))
            got = {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.requires_grad}
        else:
            loss = forward_backward(model, batch, chunk_size=3, temperature=0.02, world=world)
            average_gradients([p for p in model.parameters() if p.requires_grad], world)
            got = grads(model)
        mean_loss = loss.clone()
        dist.all_reduce(mean_loss)
        if rank == 0:
            torch.save({"loss": mean_loss / world_size, "grads": got}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_gloo_equals_one_process(tmp_path: Path, strategy: str) -> None:
    import torch.multiprocessing as mp

    model = lora_model()
    loss = forward_backward(model, make_batch(range(8)), chunk_size=1000, temperature=0.02)
    single = grads(model)
    out = str(tmp_path / "rank0.pt")
    # Rows 1, 4 and 7 lack a hard negative: the ranks hold different numbers of documents
    # (and, for FSDP, run different numbers of chunks). GradCache chunks of 3 on each rank.
    mp.start_processes(_worker, args=(2, _free_port(), out, strategy), nprocs=2, join=True, start_method="fork")
    got = torch.load(out)
    torch.testing.assert_close(got["loss"], loss, atol=1e-5, rtol=1e-5)
    for name, g in single.items():
        torch.testing.assert_close(got["grads"][name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_grad_cache_with_matryoshka_dims_equals_full_batch() -> None:
    batch = make_batch(range(8))
    model = lora_model()
    full_loss = forward_backward(model, batch, chunk_size=1000, temperature=0.02, matryoshka_dims=(16, 4))
    full = grads(model)
    model.zero_grad(set_to_none=True)
    cached_loss = forward_backward(model, batch, chunk_size=3, temperature=0.02, matryoshka_dims=(16, 4))
    torch.testing.assert_close(cached_loss, full_loss, atol=1e-5, rtol=1e-5)
    for name, g in grads(model).items():
        torch.testing.assert_close(g, full[name], atol=1e-5, rtol=1e-4, msg=name)
    model.zero_grad(set_to_none=True)
    plain = forward_backward(model, batch, chunk_size=1000, temperature=0.02)
    assert abs(float(plain) - float(full_loss)) > 1e-3  # the prefixes are in the loss
