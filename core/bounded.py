"""Reading what an attacker may have written, with bounds: regular files only, sizes
checked on the opened descriptor before a byte is read, JSON nesting limited, numbers finite.

A path can name a FIFO (open() blocks until a writer comes), a device (/dev/zero never ends)
or a symlink out of the directory it was found in. Each read here opens with O_NONBLOCK,
looks at the descriptor it got (fstat, so a swap after a check cannot fool it) and refuses
anything but a regular file within its size. Errors are `ValueError` subclasses whose
message names the file and the problem in one line; callers wrap them in their own
vocabulary (JobError, ConfigError, Rejection).
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MAX_JSON_DEPTH = 64
# A JSON string with its escapes, so the brackets inside strings are not counted.
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


class Unreadable(ValueError):
    """A file, or JSON text, that is refused: the message says which and why."""


def open_regular(path: Path, limit: int, *, inside: Path | None = None) -> int:
    """A read-only descriptor on `path` if it is a regular file of at most `limit` bytes
    (and, with `inside`, resolves to a place within that directory); else Unreadable."""
    if inside is not None:
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise Unreadable(f"{path.name} cannot be read ({_why(exc)})") from exc
        if inside.resolve() not in real.parents:
            raise Unreadable(f"{path.name} is a link to somewhere outside {inside.name}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise Unreadable(f"{path.name} cannot be read ({_why(exc)})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise Unreadable(f"{path.name} is {kind}")
        if info.st_size > limit:
            raise Unreadable(f"{path.name} is larger than {limit} bytes")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bytes(path: Path, limit: int, *, inside: Path | None = None) -> bytes:
    """The whole of a regular file of at most `limit` bytes (see open_regular)."""
    fd = open_regular(path, limit, inside=inside)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)  # a file that grew since fstat is cut, then refused
    if len(data) > limit:
        raise Unreadable(f"{path.name} is larger than {limit} bytes")
    return data


def chunks(path: Path, limit: int, *, inside: Path | None = None) -> Iterator[bytes]:
    """A regular file of at most `limit` bytes, in 1 MiB blocks (for digests)."""
    fd = open_regular(path, limit, inside=inside)
    seen = 0
    with os.fdopen(fd, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            seen += len(block)
            if seen > limit:
                raise Unreadable(f"{path.name} is larger than {limit} bytes")
            yield block


def check_depth(data: bytes, max_depth: int = MAX_JSON_DEPTH, what: str = "the JSON") -> None:
    """Unreadable if JSON text nests arrays and objects deeper than `max_depth` (json.loads
    would recurse once per level: 100,000 levels is a RecursionError)."""
    depth = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub(b'""', data)):
        depth += 1 if bracket in (b"[", b"{") else -1
        if depth > max_depth:
            raise Unreadable(f"{what} nests deeper than {max_depth} levels")


def _no_constant(name: str) -> Any:
    raise Unreadable(f"holds {name}, which is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Unreadable(f"holds the number {text[:20]}, out of range")
    return value


def loads(data: bytes | str, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON with its depth bounded, NaN and Infinity refused and every number finite."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    check_depth(raw, max_depth, what)
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except Unreadable as exc:
        raise Unreadable(f"{what} {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise Unreadable(f"{what} is not JSON") from exc


def read_json(
    path: Path, limit: int, *, inside: Path | None = None, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """A bounded regular file's JSON (see read_bytes and loads)."""
    return loads(read_bytes(path, limit, inside=inside), path.name, max_depth)


def _why(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
