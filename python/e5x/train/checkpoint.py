"""Checkpoints that resume a run exactly: adapter weights, optimiser, schedule, RNG, step.

The data position is the step itself (the batch plan is a pure function of it). A
checkpoint directory is written under a temporary name and renamed when complete, so a
crash or NaN mid-save never leaves a half-written "latest" checkpoint.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e5x.train.step import World

PREFIX = "step-"


def _dir(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step:08d}"


def latest(root: str | Path) -> Path | None:
    root = Path(root)
    if not root.is_dir():
        return None
    done = sorted(p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "state.json").is_file())
    return done[-1] if done else None


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    root: str | Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    world: World,
    meta: dict[str, Any],
    keep: int,
) -> Path:
    """Rank 0 writes weights/optimiser (full, gathered by the caller); every rank its RNG."""
    root = Path(root)
    final = _dir(root, step)
    tmp = root / f".tmp-{final.name}"
    if world.rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier(world)
    torch.save(rng_state(), tmp / f"rng-rank{world.rank}.pt")
    if world.rank == 0:
        torch.save(trainable, tmp / "trainable.pt")
        torch.save(optimizer, tmp / "optimizer.pt")
        torch.save(scheduler, tmp / "scheduler.pt")
    _barrier(world)
    if world.rank == 0:
        (tmp / "state.json").write_text(json.dumps({"step": step, **meta}, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        done = sorted(p for p in root.iterdir() if p.name.startswith(PREFIX))
        for old in done[: max(0, len(done) - keep)]:
            shutil.rmtree(old)
    _barrier(world)
    return final


def load(path: Path, world: World) -> dict[str, Any]:
    state = json.loads((path / "state.json").read_text())
    rng_file = path / f"rng-rank{world.rank}.pt"
    if not rng_file.is_file():
        raise RuntimeError(
            f"{path}: no RNG state for rank {world.rank}; resume with the same number of "
            "processes as the run that wrote the checkpoint"
        )
    return {
        "step": int(state["step"]),
        "meta": state,
        "trainable": torch.load(path / "trainable.pt", map_location="cpu", weights_only=True),
        "optimizer": torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False),
        "scheduler": torch.load(path / "scheduler.pt", map_location="cpu", weights_only=False),
        "rng": torch.load(rng_file, weights_only=False),
    }


def _barrier(world: World) -> None:
    if world.size > 1:
        torch.distributed.barrier()
