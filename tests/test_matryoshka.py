"""Matryoshka training (TrainConfig.matryoshka_dims) and truncated embeddings
(Embedder(truncate_dim=...)): the loss against a float64 reference, GradCache, a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _tiny import toy_triples
from e5x.training import ConfigError, TrainConfig, train
from e5x.training.step import World, contrastive_loss

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "arch": "mistral",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def info_nce_f64(q: torch.Tensor, d: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean InfoNCE, query i's positive is document i (written out, not e5x's)."""
    s = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(d, dim=1).T / tau
    return (torch.logsumexp(s, dim=1) - s.diagonal()).mean()


@pytest.mark.parametrize("dims", [(), (8,), (8, 3, 1)])
def test_loss_is_the_mean_over_the_full_size_and_each_prefix(dims) -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(5, 12, generator=g, dtype=torch.float64, requires_grad=True)
    d = torch.randn(9, 12, generator=g, dtype=torch.float64, requires_grad=True)  # 5 positives + 4 more
    got = contrastive_loss(q, d, World(), 0.05, dims)
    want = torch.stack([info_nce_f64(q[:, :m], d[:, :m], 0.05) for m in (12, *dims)]).mean()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    gq, gd = torch.autograd.grad(got, (q, d))
    wq, wd = torch.autograd.grad(want, (q, d))
    torch.testing.assert_close(gq, wq, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gd, wd, rtol=1e-9, atol=1e-12)
    if dims:  # the prefixes change the loss: the full-size loss alone differs
        assert abs(float(got.detach()) - float(info_nce_f64(q, d, 0.05).detach())) > 1e-3


def _config(tmp: Path, **overrides) -> TrainConfig:
    data = tmp / "toy.parquet"
    if not data.exists():
        toy_triples(128, seed=0).write_parquet(data)
    base = dict(tiny_model=TINY, sources=[{"path": str(data), "instruction": "Find the code"}],
                output_dir=str(tmp / "run"), batch_size=16, chunk_size=8, max_length=40, lr=5e-3,
                warmup_steps=2, max_steps=16, save_every=100, precision="fp32", progress=False, seed=1)  # fmt: skip
    base.update(overrides)
    return TrainConfig(**base)


def test_bad_dims_fail_before_training(tmp_path) -> None:
    for bad, match in (([0], r"matryoshka_dims\[0\]: must be >= 1"), ([8, 8], "duplicates"),
                       (["8"], r"matryoshka_dims\[0\]: must be an integer >= 1"),
                       ([True], r"matryoshka_dims\[0\]: must be an integer >= 1"),
                       (8, "matryoshka_dims: must be a list of integers")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            _config(tmp_path, matryoshka_dims=bad).validate()
    with pytest.raises(ConfigError, match=r"matryoshka_dims \[4, 32\] must be below the model's hidden size 32"):
        train(_config(tmp_path, matryoshka_dims=[4, 32]))


def test_tiny_run_saves_the_dims_and_truncated_embeddings_are_renormalised_prefixes(tmp_path) -> None:
    from e5x.model.embedder import Embedder

    result = train(_config(tmp_path, matryoshka_dims=[16, 4]))
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert last < 0.8 * first, result.losses
    model_dir = result.model_dir
    assert json.loads((model_dir / "e5x.json").read_text())["matryoshka_dims"] == [16, 4]

    texts = ["the code abcd is here", "zz", "a somewhat longer text about nothing"]
    raw = Embedder.from_pretrained(model_dir, normalize=False, show_progress=False, device="cpu")
    assert raw.spec.matryoshka_dims == (16, 4)
    full = raw.encode(texts, output="torch")
    for m in (16, 4, 32):
        emb = Embedder.from_pretrained(model_dir, truncate_dim=m, show_progress=False, device="cpu")
        got = emb.encode(texts, output="torch")
        assert got.shape == (3, m) and emb.dim == m
        torch.testing.assert_close(got, torch.nn.functional.normalize(full[:, :m], dim=1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"truncate_dim must be in 1\.\.32"):
        Embedder.from_pretrained(model_dir, truncate_dim=33, show_progress=False, device="cpu")
