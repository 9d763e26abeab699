"""Knobs of the Triton path, as arguments, and what a process actually ran with.

Three places set a knob, the first that has it wins:

1. a per-call argument (``info_nce(..., mode="lean", chunk_mib=256)``);
2. the environment (``E5X_INFONCE_MODE``, ``E5X_INFONCE_CHUNK_MIB``, ``E5X_AUTOTUNE``): an
   override for benchmarks and one-off runs;
3. the process default, ``configure(...)`` (``e5x.train`` calls it from ``TrainConfig``).

``runtime_info()`` is what a run records: the effective settings (and where each came from)
plus what happened at run time (the GEMM path taken, a fallback and its reason).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

log = logging.getLogger("e5x.kernels")

MODES = ("auto", "fused", "lean", "backward")
_ENV = {"mode": "E5X_INFONCE_MODE", "chunk_mib": "E5X_INFONCE_CHUNK_MIB", "autotune": "E5X_AUTOTUNE"}


@dataclass(frozen=True)
class KernelSettings:
    """``mode``: fused / lean / backward / auto (see kernels/README.md); ``chunk_mib``: memory
    budget of the gradient chunks; ``autotune``: tune tile configs (else the first config)."""

    mode: str = "auto"
    chunk_mib: float = 1024.0
    autotune: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"InfoNCE mode must be one of {MODES}, got {self.mode!r}")
        if isinstance(self.chunk_mib, bool) or not isinstance(self.chunk_mib, (int, float)) or not self.chunk_mib > 0:
            raise ValueError(f"chunk_mib must be a number > 0, got {self.chunk_mib!r}")
        if not isinstance(self.autotune, bool):
            raise TypeError(f"autotune must be a bool, got {self.autotune!r}")


_default = KernelSettings()
_call: dict[str, Any] = {}  # per-call arguments while a call runs (see `override`)
# what happened at run time, for the run's metrics
RUNTIME: dict[str, Any] = {"gemm_path": None, "gemm_fallback": None}


def configure(**kw: Any) -> KernelSettings:
    """Set the process defaults (unknown names are errors); returns the effective settings."""
    global _default
    unknown = set(kw) - set(_ENV)
    if unknown:
        raise TypeError(f"unknown kernel settings {sorted(unknown)}; known: {sorted(_ENV)}")
    changes: dict[str, Any] = {k: (float(v) if k == "chunk_mib" else v) for k, v in kw.items()}
    _default = replace(_default, **changes)
    return current()


def _from_env(name: str) -> Any:
    raw = os.environ.get(_ENV[name])
    if raw is None or raw == "":
        return None
    if name == "mode":
        if raw not in MODES:
            raise ValueError(f"E5X_INFONCE_MODE must be auto, fused, lean or backward, got {raw!r}")
        return raw
    if name == "chunk_mib":
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"E5X_INFONCE_CHUNK_MIB must be a number, got {raw!r}") from None
    return raw != "0"


def current() -> KernelSettings:
    values = {}
    for name in _ENV:
        if name in _call:
            values[name] = _call[name]
        else:
            env = _from_env(name)
            values[name] = env if env is not None else getattr(_default, name)
    return KernelSettings(**values)


def sources() -> dict[str, str]:
    """Where each effective value comes from: argument, environment or configure/default."""
    return {n: "argument" if n in _call else ("environment" if _from_env(n) is not None else "config") for n in _ENV}


@contextmanager
def override(**kw: Any) -> Iterator[KernelSettings]:
    """Per-call arguments (None = not given) for the duration of one op call."""
    given = {k: (float(v) if k == "chunk_mib" else v) for k, v in kw.items() if v is not None}
    if not given:
        yield current()
        return
    KernelSettings(**{**asdict(current()), **given})  # validate
    saved = dict(_call)
    _call.update(given)
    try:
        yield current()
    finally:
        _call.clear()
        _call.update(saved)


_warned: set[str] = set()


def record_fallback(what: str, reason: str) -> None:
    """A fallback taken at run time: logged once per kind, kept in RUNTIME for the metrics."""
    RUNTIME[f"{what}_fallback"] = reason
    if what not in _warned:
        _warned.add(what)
        log.warning("e5x.kernels: %s fallback: %s", what, reason)


def runtime_info() -> dict[str, Any]:
    """Effective settings, their sources, and what the process ran (GEMM path, fallbacks)."""
    return {**asdict(current()), "sources": sources(), **RUNTIME}
