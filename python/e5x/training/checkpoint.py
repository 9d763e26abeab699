"""Checkpoints that resume a run exactly: adapter weights, optimiser, schedule, RNG, step.

The data position is the step itself (the batch plan is a pure function of it). A
checkpoint directory is written under a temporary name and renamed when complete, so a
crash or NaN mid-save never leaves a half-written "latest" checkpoint.

``state.json`` lists every other file of the checkpoint with its size and SHA-256, and
both are verified before anything is loaded: a truncated, emptied or bit-flipped file
(disk faults, a copy cut short) is a :class:`CheckpointError` naming the file, and
:func:`latest` passes over such a checkpoint, saying so, to the newest good one.

``state.json`` also records the run that wrote it (:func:`run_record`: the resolved config,
the number of processes, a fingerprint of the data) and the config changes earlier resumes
allowed; :func:`config_changes` compares a new run with it before any model loads.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import random
import shutil
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e5x.data.triples import Source
from e5x.model.loading import TinyModelConfig
from e5x.training.config import RESUME_FREE, ConfigError, TrainConfig
from e5x.training.step import World

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


def run_record(
    cfg: TrainConfig, world_size: int, total_steps: int, known: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What decides a run's result besides its step: the resolved config (as JSON stores
    it), the number of processes, and per source a fingerprint of its data (the SHA-256 of
    its files in reading order). ``data_files`` keeps each file's size, mtime and SHA-256, so
    a file whose size and mtime match ``known`` (an earlier record's) is not hashed again."""
    known = known or {}
    data, files = [], {}
    for source in cfg.sources:
        digests, size = [], 0
        for f in source.files():
            st = f.stat()
            key = str(f.resolve())
            seen = known.get(key) or {}
            same = seen.get("bytes") == st.st_size and seen.get("mtime_ns") == st.st_mtime_ns
            sha = seen["sha256"] if same and "sha256" in seen else _sha256(f)
            files[key] = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
            digests.append(sha)
            size += st.st_size
        whole = digests[0] if len(digests) == 1 else hashlib.sha256("\n".join(digests).encode()).hexdigest()
        data.append(f"{len(digests)} file(s), {size:,} bytes, sha256 {whole[:16]}")
    return {
        "config": json.loads(json.dumps(cfg.to_dict(), default=str)),
        "world_size": world_size,
        "total_steps": total_steps,
        "data": data,
        "data_files": files,
    }


def config_changes(path: Path, state: dict[str, Any], record: dict[str, Any],
                   allow: Collection[str] = ()) -> list[dict[str, Any]]:  # fmt: skip
    """The differences between the run that wrote checkpoint ``path`` (its ``state``) and
    ``record`` (:func:`run_record`), as ``{"field", "old", "new"}`` with dotted field names
    (``lr``, ``sources.0.instruction``, ``sources.0.data``, ``tiny_model.hidden_size``).

    Every config field is compared except ``RESUME_FREE``; a field the checkpoint does not
    record (added to e5x after it was written) counts as its default, which keeps the old
    behaviour. A change is refused with a :class:`ConfigError` naming the checkpoint, each
    field with its old and new value, and the flag that allows it, unless ``allow`` names
    the field or a table or list that holds it (``sources`` covers ``sources.0.data``).
    """
    if state.get("world_size", record["world_size"]) != record["world_size"]:
        raise ConfigError(f"{path}: cannot resume: the checkpoint was written by {state['world_size']} processes, "
                          f"this run has {record['world_size']}; resume with {state['world_size']}")  # fmt: skip
    new = {k: copy.deepcopy(v) for k, v in record["config"].items() if k not in RESUME_FREE}
    for source, data in zip(new.get("sources", []), record["data"], strict=True):
        source["data"] = data
    if "config" in state:
        defaults = TrainConfig(sources=[Source()], tiny_model=TinyModelConfig()).to_dict()
        old = _with_defaults(json.loads(json.dumps(state["config"])), json.loads(json.dumps(defaults, default=str)))
        for source, data in zip(old.get("sources", []), state.get("data", []), strict=False):
            source["data"] = data
    else:  # written before checkpoints recorded their config: compare what they did record
        old = {k: state[k] for k in ("batch_size", "seed", "task_homogeneous") if k in state}
        new = {k: new[k] for k in old}
        if "total_steps" in state:  # epochs or max_steps, as the number of steps they gave
            old["max_steps"], new["max_steps"] = state["total_steps"], record["total_steps"]
    changes = [{"field": k, "old": o, "new": n} for k, o, n in _diff(old, new, "")]
    refused = [c["field"] for c in changes if not any(c["field"] == a or c["field"].startswith(a + ".")
                                                      for a in allow)]  # fmt: skip
    if refused:
        what = "; ".join(f"{c['field']} was {_show(c['old'])}, now {_show(c['new'])}"
                         for c in changes if c["field"] in refused)  # fmt: skip
        raise ConfigError(
            f"{path}: cannot resume: the config changed since this checkpoint: {what}; to resume anyway, "
            f"pass --allow-config-change {','.join(refused)} (Python: allow_config_change={refused}), "
            "or start afresh with a new output_dir or resume = false"
        )
    return changes


def check_allowed_names(names: Collection[str]) -> list[str]:
    """``names`` as given to ``allow_config_change``: each must start with a TrainConfig field."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for name in names:
        if not isinstance(name, str) or name.split(".")[0] not in known:
            raise ConfigError(f"allow_config_change: {name!r} is not a config field; fields are {sorted(known)}")
    return list(names)


_ABSENT = object()


def _with_defaults(old: Any, default: Any) -> Any:
    """``old`` with the keys it lacks (fields newer than it) taken from ``default``; lists
    of tables take their defaults from ``default``'s first entry."""
    if isinstance(old, dict) and isinstance(default, dict):
        return {**default, **{k: _with_defaults(v, default.get(k)) for k, v in old.items()}}
    if isinstance(old, list) and isinstance(default, list) and default and isinstance(default[0], dict):
        return [_with_defaults(v, default[0]) for v in old]
    return old


def _diff(old: Any, new: Any, key: str) -> list[tuple[str, Any, Any]]:
    """``(dotted field, old, new)`` for each difference; only ``new``'s keys count, so a
    field this version no longer has is not compared."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k, v in new.items() for c in _diff(old.get(k, _ABSENT), v, f"{key}.{k}" if key else k)]
    if (
        isinstance(old, list)
        and isinstance(new, list)
        and len(old) == len(new)
        and any(isinstance(v, dict) for v in new)
    ):
        return [c for i, (o, n) in enumerate(zip(old, new)) for c in _diff(o, n, f"{key}.{i}")]
    return [] if old == new else [(key, None if old is _ABSENT else old, new)]


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 120 else text[:117] + "..."


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
