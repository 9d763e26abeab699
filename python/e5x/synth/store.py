"""The run directory's lock: one synth process per run.

A run's logs and the JSON files it replaces are written through the format modules
(``e5x.formats.response_log``, ``e5x.formats.jsonfile``); their names are re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path

from e5x.formats.jsonfile import write_json_atomic as write_json_atomic
from e5x.formats.response_log import AppendLog as AppendLog
from e5x.formats.response_log import read_log as read_log


class LogLockedError(RuntimeError):
    pass


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
