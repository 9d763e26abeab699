"""False-negative masking end to end: group ids in collate, the step's loss against float64
math, GradCache and 2-process gloo equivalence with duplicates across ranks, a training run.

Classification-style rows (the recipe's long-short type) share a handful of label texts as
positives, so a row's own label comes back as other rows' documents: those must not count
as its negatives.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from _tiny import tiny_model, tiny_tokenizer
from e5x.data import TripleStore, collate
from e5x.data import batch as batch_mod
from e5x.data.batch import normalize_text, text_group_id
from e5x.data.triples import Source
from e5x.model.loading import apply_lora
from e5x.training.step import World, average_gradients, embed, forward_backward, masked_negatives

pytestmark = pytest.mark.usefixtures("one_thread")

# Labels repeat, in spellings that normalise alike ("Sports" / " sports " / full-width).
LABELS = ["Sports", "politics", " sports ", "ＳＰＯＲＴＳ", "weather", "Politics"]


def classification_rows(n: int, seed: int) -> pl.DataFrame:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label, other = rng.sample(LABELS, 2)
        rows.append(
            {
                "instruction": "Classify the news topic",
                "query": f"headline {i} about {label.strip().lower()}",
                "positive": label,
                "negative": other if i % 4 else None,
            }
        )
    return pl.DataFrame(rows, schema={c: pl.Utf8 for c in rows[0]})


def store_of(df: pl.DataFrame, tmp: Path) -> TripleStore:
    path = tmp / "cls.parquet"
    df.write_parquet(path)
    return TripleStore([Source(str(path))])


def lora_model():
    torch.manual_seed(0)
    model = apply_lora(tiny_model(), dropout=0.0)
    with torch.no_grad():  # LoRA B starts at zero: perturb it so lora_A gets gradients
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_collate_hashes_each_text_once_into_normalised_group_ids(tmp_path, monkeypatch) -> None:
    df = classification_rows(9, seed=1)
    store = store_of(df, tmp_path)
    calls = []
    monkeypatch.setattr(batch_mod, "text_group_id", lambda t, f=text_group_id: (calls.append(t), f(t))[1])
    pairs = np.array([[0, i] for i in range(9)])
    batch = collate(store, pairs, tiny_tokenizer(), 32)
    negatives = [n for n in df["negative"] if n is not None]
    docs = list(df["positive"]) + negatives
    assert sorted(calls) == sorted(set(df["query"]) | set(docs))  # every distinct text once
    assert batch.query_groups.shape == (9, 2) and batch.doc_groups.shape == (9 + len(negatives),)
    for i, a in enumerate(docs):
        for j, b in enumerate(docs):
            same = normalize_text(a) == normalize_text(b)
            assert (batch.doc_groups[i] == batch.doc_groups[j]) == same, (a, b)
    assert normalize_text(" ＳＰＯＲＴＳ ") == normalize_text("sports")
    assert torch.equal(batch.query_groups[:, 0], batch.doc_groups[:9])  # row i's positive is document i
    assert batch.query_groups[:, 1].tolist() == [text_group_id(q) for q in df["query"]]  # bare query
    assert bool((batch.doc_groups >= 0).all())
    moved = batch.to("cpu")
    assert torch.equal(moved.query_groups, batch.query_groups) and torch.equal(moved.doc_groups, batch.doc_groups)


def test_group_ids_are_the_same_in_every_process() -> None:
    """Ranks hash their own texts, so the id must not depend on the process (unlike hash())."""
    code = "from e5x.data.batch import text_group_id; print(text_group_id('Ｓports  News'))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert int(out.stdout) == text_group_id("sports news") == text_group_id(" SPORTS\tnews")
    assert text_group_id("sports news") != text_group_id("sports")


def reference_loss(q: torch.Tensor, d: torch.Tensor, qg: torch.Tensor, dg: torch.Tensor, tau: float) -> torch.Tensor:
    """Masked InfoNCE in float64, written out row by row."""
    q = torch.nn.functional.normalize(q.double(), dim=-1)
    d = torch.nn.functional.normalize(d.double(), dim=-1)
    s = q @ d.T / tau
    rows = []
    for i in range(q.shape[0]):
        keep = [j for j in range(d.shape[0]) if j == i or int(dg[j]) not in {int(g) for g in qg[i]}]
        rows.append(torch.logsumexp(s[i, keep], 0) - s[i, i])
    return torch.stack(rows).mean()


@pytest.mark.parametrize("chunk", [1000, 3])
def test_step_loss_matches_float64_and_grad_cache_stays_exact(tmp_path, chunk: int) -> None:
    store = store_of(classification_rows(10, seed=2), tmp_path)
    batch = collate(store, np.array([[0, i] for i in range(10)]), tiny_tokenizer(), 32)
    assert masked_negatives(batch) > 10  # repeated labels: many false negatives in this batch
    model = lora_model()
    with torch.no_grad():
        q, d = embed(model, batch.queries), embed(model, batch.docs)
    want = reference_loss(q, d, batch.query_groups, batch.doc_groups, 0.02)
    full = forward_backward(model, batch, chunk_size=1000, temperature=0.02)
    full_grads = grads(model)
    torch.testing.assert_close(full.double(), want, atol=1e-5, rtol=1e-5)
    model.zero_grad(set_to_none=True)
    cached = forward_backward(model, batch, chunk_size=chunk, temperature=0.02)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    for name, g in grads(model).items():
        torch.testing.assert_close(g, full_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    model.zero_grad(set_to_none=True)
    plain = forward_backward(model, batch, chunk_size=chunk, temperature=0.02, mask_false_negatives=False)
    assert float(plain - full) > 0.1  # the masked documents carried real probability mass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, batches: list, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        batch = batches[rank]
        world = World.current()
        model = lora_model()
        loss = forward_backward(model, batch, chunk_size=3, temperature=0.02, world=world)
        average_gradients([p for p in model.parameters() if p.requires_grad], world)
        stats = torch.tensor([float(loss), float(masked_negatives(batch, world))], dtype=torch.float64)
        dist.all_reduce(stats)
        if rank == 0:
            torch.save({"loss": stats[0] / world_size, "masked": int(stats[1]), "grads": grads(model)}, out)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_masking_equals_one_process(tmp_path) -> None:
    """Labels repeat across the ranks' halves of the batch: documents gathered from the
    other rank are masked with the ids gathered alongside them."""
    import torch.multiprocessing as mp

    df = classification_rows(10, seed=3)
    store = store_of(df, tmp_path)
    batch = collate(store, np.array([[0, i] for i in range(10)]), tiny_tokenizer(), 32)
    model = lora_model()
    loss = forward_backward(model, batch, chunk_size=1000, temperature=0.02)
    single = grads(model)
    labels = [{normalize_text(t) for t in df["positive"][k * 5 : k * 5 + 5]} for k in range(2)]
    assert labels[0] & labels[1]  # some label occurs on both ranks
    out = str(tmp_path / "rank0.pt")
    # Collated here: polars' thread pool does not survive a fork, the workers only train.
    halves = [
        collate(store, np.array([[0, i] for i in range(k * 5, k * 5 + 5)]), tiny_tokenizer(), 32) for k in range(2)
    ]
    assert halves[0].num_docs != halves[1].num_docs  # uneven hard negatives: padded gathers
    mp.start_processes(_worker, args=(2, _free_port(), halves, out), nprocs=2, join=True, start_method="fork")
    got = torch.load(out)
    assert got["masked"] == masked_negatives(batch) > 0
    torch.testing.assert_close(got["loss"].float(), loss, atol=1e-5, rtol=1e-5)
    for name, g in got["grads"].items():
        torch.testing.assert_close(g, single[name], atol=1e-5, rtol=1e-4, msg=name)


def test_tiny_training_run_logs_masked_counts_and_masking_changes_the_loss(tmp_path) -> None:
    from e5x.training import TrainConfig, train

    data = tmp_path / "cls.parquet"
    classification_rows(64, seed=4).write_parquet(data)
    tiny = {
        "arch": "mistral",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }
    runs = {}
    for mask in (True, False):
        cfg = TrainConfig(
            tiny_model=tiny,
            sources=[{"path": str(data), "name": "cls"}],
            output_dir=str(tmp_path / str(mask)),
            batch_size=16,
            chunk_size=16,
            max_length=32,
            lr=5e-3,
            warmup_steps=1,
            max_steps=3,
            save_every=10,
            precision="fp32",
            progress=False,
            seed=1,
            mask_false_negatives=mask,
        )
        result = train(cfg)
        records = [json.loads(x) for x in (tmp_path / str(mask) / "metrics.jsonl").read_text().splitlines()]
        runs[mask] = (result.losses, [r["masked_negatives"] for r in records])
    (on_losses, on_counts), (off_losses, off_counts) = runs[True], runs[False]
    assert len(on_counts) == 3 and all(c > 0 for c in on_counts), on_counts
    assert off_counts == [0, 0, 0]
    # Same data, same init: the masked run's first loss is lower (mass removed), not equal.
    assert on_losses[0] < off_losses[0] - 0.1, (on_losses, off_losses)
