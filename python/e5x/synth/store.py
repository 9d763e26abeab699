"""Durable, append-only JSONL logs of a synth run.

Why this is enough for kill -9: every record is one ``os.write`` of a whole line to an
``O_APPEND`` descriptor. Once ``write`` returns the bytes are in the kernel's page cache,
which survives the death of the process; only an OS crash or power loss can drop them, and
that is what ``fsync`` guards against. The policy (``SynthConfig.fsync``):

- ``interval`` (default): fsync at most every ``fsync_interval_s`` and on close. A power
  loss can lose at most that window of responses; resume re-requests them (cost, not
  corruption). Per-record fsync would cap throughput at the disk's flush rate.
- ``always``: fsync after every record (slow disks: a few hundred records/s at best).
- ``never``: leave flushing to the OS.

A process killed mid-``write`` can leave a torn last line (no newline / invalid JSON);
:func:`read_log` drops it and truncates the file back to the last complete line before the
log is reopened for appending.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class LogLockedError(RuntimeError):
    pass


def read_log(path: Path, *, repair: bool = False) -> tuple[list[dict[str, Any]], int]:
    """All complete records of a JSONL log and the number of bytes dropped from its end.

    With ``repair`` a torn tail is truncated away on disk so that appends start on a
    fresh line. A bad line *inside* the file (not possible with a single appender, but
    possible after disk corruption) is skipped with a warning rather than fatal.
    """
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # bytes after the last newline are a torn line
    records: list[dict[str, Any]] = []
    bad = 0
    for line in data[:end].splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:  # valid JSON but not a record: as corrupt as a broken line
            bad += 1
    if bad:
        import warnings

        warnings.warn(f"{path}: skipped {bad} corrupt line(s)", stacklevel=2)
    dropped = len(data) - end
    if dropped and repair:
        with path.open("r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return records, dropped


class AppendLog:
    """One appender of a JSONL file with the fsync policy above."""

    def __init__(self, path: Path, *, fsync: str = "interval", fsync_interval_s: float = 1.0) -> None:
        self.path = path
        self.policy = fsync
        self.interval = fsync_interval_s
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._last_sync = time.monotonic()
        self._dirty = False

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        view = memoryview(line)
        while view:  # regular-file writes are complete in practice; loop for correctness
            n = os.write(self.fd, view)
            view = view[n:]
        self._dirty = True
        if self.policy == "always":
            self.sync()
        elif self.policy == "interval" and time.monotonic() - self._last_sync >= self.interval:
            self.sync()

    def sync(self) -> None:
        if self._dirty and self.policy != "never":
            os.fsync(self.fd)
        self._dirty = False
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self.fd >= 0:
            if self._dirty:
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1


class RunLock:
    """An exclusive flock on the run directory: two writers would interleave and re-send.

    The kernel releases it when the process dies, so a kill -9 never leaves a stale lock.
    """

    def __init__(self, run_dir: Path) -> None:
        import fcntl

        self.path = run_dir / ".lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise LogLockedError(f"{run_dir} is in use by another e5x synth process") from None

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write-then-rename so a reader (or a resume after kill -9) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
