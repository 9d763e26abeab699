"""benches/bench_train.py runs end to end on CPU (tiny shape, tiny step) and reports sane numbers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

BENCH = Path(__file__).resolve().parent.parent / "benches" / "bench_train.py"


def load_bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_batch_generator_matches_the_stated_length_distribution() -> None:
    bench = load_bench()
    batches = bench.make_batches(40, queries=32, docs=64, vocab=1000, seed=0)
    q = np.array([len(s) for qs, _ in batches for s in qs])
    d = np.array([len(s) for _, ds in batches for s in ds])
    assert q.min() >= 8 and q.max() <= 64 and 20 <= np.median(q) <= 28
    assert d.min() >= 16 and d.max() <= 512 and 160 <= np.median(d) <= 200
    assert all(s[-1] == bench.EOS for qs, ds in batches for s in qs + ds)
    again = bench.make_batches(40, queries=32, docs=64, vocab=1000, seed=0)
    assert again == batches  # seeded: every variant sees the same steps


def test_bench_runs_on_cpu(tmp_path: Path) -> None:
    bench = load_bench()
    out = tmp_path / "bench.json"
    rc = bench.main(
        ["--device", "cpu", "--queries", "2", "--layers", "1", "--steps", "1", "--warmup", "1", "--json", str(out)]
    )
    assert rc == 0
    res = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
    assert {"plain", "grouped", "packed", "packed+trim", "e5x"} <= res.keys()
    assert res["plain"]["padding_share"] > 0.2  # documents padded to the longest
    for name in ("packed", "packed+trim", "e5x"):
        assert res[name]["padding_share"] == 0.0
        assert res[name]["finite"]
    # same batches everywhere: useful tokens per step agree across variants
    per_step = {round(r["useful_tokens_per_s"] * r["step_s"]) for r in res.values()}
    assert len(per_step) == 1
