"""GradCache chunked by a token budget, and the document gather's reduce-scatter backward."""

from __future__ import annotations

import os
import socket

import pytest
import torch

from e5x.training.step import World, chunk_bounds, forward_backward, num_chunks
from test_train_step import grads, lora_model, make_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def test_chunk_bounds_by_tokens_and_rows() -> None:
    lengths = [10, 30, 5, 5, 100, 2, 2, 2]
    # packed: real tokens; a row over budget is a chunk of its own
    assert chunk_bounds(lengths, None, 40, packed=True) == [(0, 2), (2, 4), (4, 5), (5, 8)]
    # padded: rows x the longest row (10+30 padded is 60 > 40)
    assert chunk_bounds(lengths, None, 40, packed=False) == [(0, 1), (1, 2), (2, 4), (4, 5), (5, 8)]
    assert chunk_bounds(lengths, 3, None) == [(0, 3), (3, 6), (6, 8)]
    assert chunk_bounds(lengths, 2, 10**6, packed=True) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert chunk_bounds(lengths, None, None) == [(0, 8)]
    for budget in (1, 7, 33, 150):
        b = chunk_bounds(lengths, None, budget, packed=True)
        assert b[0][0] == 0 and b[-1][1] == len(lengths) and all(x[1] == y[0] for x, y in zip(b, b[1:]))
        assert all(sum(lengths[s:e]) <= budget or e - s == 1 for s, e in b)


def test_grad_cache_by_tokens_equals_full_batch() -> None:
    batch = make_batch(range(8))
    model = lora_model()
    full_loss = forward_backward(model, batch, chunk_size=None, temperature=0.02)
    full = grads(model)
    n_tokens = int(batch.docs["attention_mask"].sum(dim=1).max())
    assert num_chunks(batch, None, n_tokens + 1, packed=True) > 4  # several chunks per side
    model.zero_grad(set_to_none=True)
    cached_loss = forward_backward(model, batch, chunk_size=None, chunk_tokens=n_tokens + 1, temperature=0.02)
    torch.testing.assert_close(cached_loss, full_loss, atol=1e-5, rtol=1e-5)
    for name, g in grads(model).items():
        torch.testing.assert_close(g, full[name], atol=1e-5, rtol=1e-4, msg=name)


def test_batch_within_the_token_budget_runs_no_grad_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch that fits the budget takes the one-forward path (no extra no-grad forward)."""
    import e5x.training.step as step

    batch = make_batch(range(8))
    calls = []
    real = step._embed
    monkeypatch.setattr(step, "_embed", lambda m, x, **kw: (calls.append(x["input_ids"].shape[0]), real(m, x, **kw))[1])
    forward_backward(lora_model(), batch, chunk_size=None, chunk_tokens=10**6, temperature=0.02)
    assert calls == [batch.num_queries, batch.num_docs]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gather_backward_is_one_reduce_scatter(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gathered documents' gradient comes back with reduce_scatter_tensor (each rank gets
    its slice), not an all-reduce of the whole gathered gradient; the 2-process equivalence
    lives in test_train_step.py::test_two_process_gloo_equals_one_process."""
    import torch.distributed as dist

    import e5x.training.step as step

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        used = []
        real_rs = dist.reduce_scatter_tensor
        monkeypatch.setattr(dist, "reduce_scatter_tensor", lambda *a, **k: (used.append("rs"), real_rs(*a, **k))[1])
        monkeypatch.setattr(dist, "all_reduce", lambda *a, **k: used.append("all_reduce"))
        x = torch.randn(3, 4, requires_grad=True)
        gathered = step._GatherWithGrad.apply(x)
        (gathered * torch.arange(12.0).view(1, 3, 4)).sum().backward()
        assert used == ["rs"]
        torch.testing.assert_close(x.grad, torch.arange(12.0).view(3, 4))
        # a process group without it: all-reduce instead, said once
        monkeypatch.setattr(step, "_REDUCE_SCATTER", [True])
        monkeypatch.setattr(dist, "reduce_scatter_tensor", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no")))
        monkeypatch.setattr(dist, "all_reduce", lambda t, op=None: used.append("all_reduce"))
        x.grad = None
        step._GatherWithGrad.apply(x).sum().backward()
        assert used[-1] == "all_reduce" and step._REDUCE_SCATTER == [False]
        assert World.current().size == 1
    finally:
        dist.destroy_process_group()


def test_train_chunks_by_tokens_and_records_kernel_settings(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TrainConfig.chunk_tokens drives GradCache in e5x.train (same losses as the sequence
    count chunking); the kernel knobs are config fields, and the effective values land in
    output_dir/kernels.json (an environment override shows as such)."""
    import dataclasses
    import json

    import e5x.kernels as kernels
    from e5x.kernels import _settings
    from e5x.training import train
    from test_train_run import config

    for var in ("E5X_INFONCE_MODE", "E5X_INFONCE_CHUNK_MIB", "E5X_AUTOTUNE", "E5X_FLEX_COMPILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(_settings, "_default", _settings.KernelSettings())
    kw = dict(max_steps=2, batch_size=8, lora_dropout=0.0, save_every=100)
    by_rows = train(config(tmp_path, "rows", chunk_size=4, **kw))
    monkeypatch.setenv("E5X_AUTOTUNE", "0")
    by_tokens = train(
        config(tmp_path, "tokens", chunk_tokens=60, infonce_mode="lean", infonce_chunk_mib=64, flex_compile=False, **kw)
    )
    assert by_tokens.losses == pytest.approx(by_rows.losses, rel=1e-4, abs=1e-5)
    rec = json.loads((tmp_path / "tokens" / "kernels.json").read_text())
    assert rec["mode"] == "lean" and rec["chunk_mib"] == 64 and rec["flex_compile"] is False
    assert rec["autotune"] is False and rec["sources"]["autotune"] == "environment"
    assert {"gemm_path", "gemm_fallback"} <= set(rec)
    assert json.loads((tmp_path / "tokens" / "train_config.json").read_text())["chunk_tokens"] == 60
    with pytest.raises(Exception, match="chunk_tokens: must be >= 1"):
        dataclasses.replace(config(tmp_path, "bad"), chunk_tokens=0).validate()
    kernels.configure(mode="auto", chunk_mib=1024, autotune=True)
