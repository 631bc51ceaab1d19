"""One worker process per data directory: its audit chain has one writer. The console reads
the same lock file to tell whether a worker is up."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from core.errors import EdgehookError


class WorkerLock:
    """One worker process per data directory (its audit chain has one writer)."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd = os.open(data_dir / "worker.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._fd)
            raise EdgehookError(
                f"another edgehook worker is running on {data_dir}; "
                "run one worker per data directory"
            ) from exc

    def release(self) -> None:
        os.close(self._fd)
