"""Reading a secret from a file: refused when group or others may read or write it. Apart from
credentials.py because the config's loader reads one too (the store URL), below it."""

from __future__ import annotations

import stat
from pathlib import Path

from core.errors import ConfigError


def read_secret_file_bytes(path: Path, key: str) -> bytes:
    """A secret file's bytes, refused when group or others may read or write it."""
    try:
        info = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            key,
            f"cannot read {path} ({exc.strerror})",
            "check the path and that this user may read it",
        ) from exc
    if info.st_mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            key,
            f"{path} is readable or writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):o})",
            f"run: chmod 600 {path}",
        )
    return data
