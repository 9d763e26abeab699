"""Checkpoints that resume a run exactly: adapter weights, optimiser, schedule, RNG, step.

The data position is the step itself (the batch plan is a pure function of it). A
checkpoint directory is written under a temporary name and renamed when complete, so a
crash or NaN mid-save never leaves a half-written "latest" checkpoint.

``state.json`` lists every other file of the checkpoint with its size and SHA-256, and
both are verified before anything is loaded: a truncated, emptied or bit-flipped file
(disk faults, a copy cut short) is a :class:`CheckpointError` naming the file, and
:func:`latest` passes over such a checkpoint, saying so, to the newest good one.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e5x.train.step import World

PREFIX = "step-"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names it and the bad file."""


def _dir(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step:08d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _manifest(d: Path) -> dict[str, dict[str, Any]]:
    return {
        f.name: {"bytes": f.stat().st_size, "sha256": _sha256(f)}
        for f in sorted(d.iterdir())
        if f.is_file() and f.name != "state.json"
    }


def read_state(path: Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint, with its files verified against their checksums.
    Checkpoints written before checksums existed (no ``files``) are read unverified."""
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: state.json is unreadable ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{path}: state.json holds no step")
    files = state.get("files")
    if files is None:
        return state
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"{path}: state.json lists no files")
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        size = f.stat().st_size
        if size != want.get("bytes"):
            raise CheckpointError(f"{path}: {name} is {size} bytes, {want.get('bytes')} were written (truncated?)")
        if _sha256(f) != want.get("sha256"):
            raise CheckpointError(f"{path}: {name} does not match its SHA-256 (corrupted on disk?)")
    return state


def latest(root: str | Path, report: Callable[[str], None] | None = None) -> Path | None:
    """The newest checkpoint that verifies. Newer ones that do not are reported (by
    default on stderr) with the reason and the checkpoint used instead."""
    root = Path(root)
    if not root.is_dir():
        return None
    say = report or (lambda m: print(m, file=sys.stderr))
    done = sorted(p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "state.json").is_file())
    bad: list[str] = []
    for path in reversed(done):
        try:
            read_state(path)
        except CheckpointError as e:
            bad.append(str(e))
            continue
        for b in bad:
            say(f"e5x train: skipping a bad checkpoint: {b}; resuming from {path}")
        return path
    for b in bad:
        say(f"e5x train: skipping a bad checkpoint: {b}; no good checkpoint left, starting from step 0")
    return None


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
        # Checksums of every file (all ranks' RNG states included), written last.
        state = {"step": step, **meta, "files": _manifest(tmp)}
        (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        done = sorted(p for p in root.iterdir() if p.name.startswith(PREFIX))
        for old in done[: max(0, len(done) - keep)]:
            shutil.rmtree(old)
    _barrier(world)
    return final


def load(path: Path, world: World) -> dict[str, Any]:
    """Everything a resume needs, after :func:`read_state` verified the files."""
    state = read_state(path)
    rng_file = path / f"rng-rank{world.rank}.pt"
    if not rng_file.is_file():
        raise RuntimeError(
            f"{path}: no RNG state for rank {world.rank}; resume with the same number of "
            "processes as the run that wrote the checkpoint"
        )

    def read(f: Path, weights_only: bool) -> Any:
        try:
            return torch.load(f, map_location="cpu", weights_only=weights_only)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
            raise CheckpointError(f"{path}: {f.name} cannot be loaded ({type(e).__name__}: {e})") from None

    return {
        "step": int(state["step"]),
        "meta": state,
        "trainable": read(path / "trainable.pt", True),
        "optimizer": read(path / "optimizer.pt", False),
        "scheduler": read(path / "scheduler.pt", False),
        "rng": read(rng_file, False),
    }


def _barrier(world: World) -> None:
    if world.size > 1:
        torch.distributed.barrier()
