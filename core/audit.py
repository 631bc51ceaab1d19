"""The tamper-evident audit log: one JSON line per request, chained and authenticated.

Each line carries `seq` (1, 2, 3, ...), `prev` (the previous line's MAC) and `mac`, an
HMAC-SHA256 under a key kept outside the log directory, over the line's text before the
`mac` field. An edited, inserted, removed or reordered line breaks the chain; `head.json`
(also MAC'd, rewritten after every line) records the last seq so a cut at the end shows.
The stdlib hmac module is used rather than cryptography's HMAC: same primitive, and about
ten times less overhead per call on the hot path of a flood.

Segments `audit-NNNNNN.jsonl` rotate by size; the chain runs on across them. Rotation keeps
`keep_files` segments and the new segment's first line records which seq is the oldest
kept, so pruning by retention is told apart from deletion. If the writer finds its file
replaced, truncated or appended to behind its back, it opens a new segment whose first line
(`kind: break`) records what it saw; `edgehook audit verify` still reports the damage.

Rejections past `rejections_per_second` are not written one by one: they are counted and
written as periodic `summary` lines, so a flood of forged requests cannot fill the disk.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, MutableMapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import structlog

from core.config import AuditConfig

GENESIS = "0" * 64
HEAD_NAME = "head.json"
HEAD_SIZE = 512
SEGMENT = re.compile(r"audit-(\d{6})\.jsonl")
LINE = re.compile(r'(?P<unsigned>\{.*),"mac":"(?P<mac>[0-9a-f]{64})"\}')
_TRACKED_CLIENTS = 1000


def line_mac(key: bytes, unsigned: str) -> str:
    return hmac.new(key, unsigned.encode("utf-8"), hashlib.sha256).hexdigest()


def segment_name(number: int) -> str:
    return f"audit-{number:06d}.jsonl"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    found = []
    if directory.is_dir():
        for path in directory.iterdir():
            match = SEGMENT.fullmatch(path.name)
            if match:
                found.append((int(match.group(1)), path))
    return sorted(found)


def seal_head(key: bytes, seq: int, mac: str, segment: str) -> bytes:
    body = {"seq": seq, "mac": mac, "segment": segment}
    unsigned = json.dumps(body, separators=(",", ":"))
    head = json.dumps(body | {"hmac": line_mac(key, unsigned)}, separators=(",", ":"))
    return head.encode("ascii").ljust(HEAD_SIZE)


def read_head(directory: Path, key: bytes) -> dict[str, Any] | None:
    """The head record if present and authentic, else None."""
    try:
        data = json.loads((directory / HEAD_NAME).read_bytes().strip() or b"null")
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("hmac"), str):
        return None
    unsigned = json.dumps(
        {k: data.get(k) for k in ("seq", "mac", "segment")}, separators=(",", ":")
    )
    return data if hmac.compare_digest(line_mac(key, unsigned), data["hmac"]) else None


def parse_line(raw: str, key: bytes) -> dict[str, Any] | None:
    """The record a line holds if its MAC is valid, else None."""
    match = LINE.fullmatch(raw)
    if match is None or not hmac.compare_digest(line_mac(key, match["unsigned"]), match["mac"]):
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


def append(directory: Path, key: bytes, config: AuditConfig, kind: str, **fields: Any) -> None:
    """One line in a chain that several processes may write now and then (operator
    commands, predictors): each writer takes the chain's lock, continues it from its last
    line and closes it again, so the chain keeps one writer at a time."""

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        log = AuditLog(directory, key, config, clock=time.time)
        try:
            log.record(kind, **fields)
        finally:
            log.close()
    finally:
        os.close(fd)


class AuditLog:
    """The writer. Single-threaded: call it from the event loop only."""

    def __init__(
        self, directory: Path, key: bytes, config: AuditConfig, *, clock: Callable[[], float]
    ) -> None:
        self._dir = directory
        self._key = key
        self._config = config
        self._clock = clock
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._head_fd = os.open(directory / HEAD_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        self._fd = -1
        self._segment = 0
        self._offset = 0
        self._seq = 0
        self._prev = GENESIS
        self._last_identity_check = 0.0
        # rejection sampling: a token bucket, and what was counted instead of written
        # (`now` arguments are monotonic seconds; `clock` gives the wall time for stamps.)
        self._tokens = float(config.rejection_burst)
        self._refilled: float | None = None
        self._suppressed: Counter[str] = Counter()
        self._clients: Counter[str] = Counter()
        self._window_start = 0.0
        self._window_wall = 0.0
        self._log = structlog.wrap_logger(
            _Sink(self),
            processors=[self._seal],
            wrapper_class=structlog.BoundLogger,
            context_class=dict,
            cache_logger_on_first_use=False,
        )
        self._recover()

    # -- public --------------------------------------------------------------------------

    def record(self, kind: str, **fields: Any) -> None:
        """Write one line, always (requests that passed authentication, state changes)."""
        self._prepare()
        # Fields travel as one argument: a field named "event" must not meet structlog's own.
        self._log.info(kind, fields=fields)

    def record_rejection(self, fields: dict[str, Any], now: float) -> None:
        """Write a rejected request's line, or count it into the next summary under a flood."""
        elapsed = 0.0 if self._refilled is None else max(0.0, now - self._refilled)
        self._refilled = now
        self._tokens = min(
            float(self._config.rejection_burst),
            self._tokens + elapsed * self._config.rejections_per_second,
        )
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.record("request", **fields)
        else:
            if not self._suppressed:
                self._window_start, self._window_wall = now, self._clock()
            self._suppressed[f"{fields.get('status')} {fields.get('reason')}"] += 1
            client = str(fields.get("client"))
            if client in self._clients or len(self._clients) < _TRACKED_CLIENTS:
                self._clients[client] += 1
        self.tick(now)

    def tick(self, now: float) -> None:
        """Write the pending summary once its interval has passed (also called by a timer)."""
        if not self._suppressed or now - self._window_start < self._config.summary_interval_s:
            return
        since = self._window_wall
        suppressed, self._suppressed = self._suppressed, Counter()
        clients, self._clients = self._clients, Counter()
        self.record(
            "summary",
            since=iso(since),
            suppressed=sum(suppressed.values()),
            by_reason=dict(suppressed),
            top_clients=dict(clients.most_common(5)),
            distinct_clients=len(clients),
        )

    def close(self) -> None:
        self.tick(float("inf"))
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
        os.fsync(self._head_fd)
        os.close(self._head_fd)

    # -- chain ---------------------------------------------------------------------------

    def _seal(self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> str:
        """structlog processor: number the line, chain it to the previous one, MAC it."""
        self._seq += 1
        record = {
            "v": 1,
            "seq": self._seq,
            "ts": iso(self._clock()),
            "kind": event_dict["event"],
        }
        record.update(event_dict.get("fields", {}))
        record["prev"] = self._prev
        unsigned = json.dumps(record, separators=(",", ":"), default=str)[:-1]
        mac = line_mac(self._key, unsigned)
        self._prev = mac
        return f'{unsigned},"mac":"{mac}"}}\n'

    def _write(self, line: str) -> None:
        data = line.encode("utf-8")
        os.write(self._fd, data)
        self._offset += len(data)
        os.pwrite(
            self._head_fd,
            seal_head(self._key, self._seq, self._prev, segment_name(self._segment)),
            0,
        )

    def _prepare(self) -> None:
        """Before a line: start a new segment if the file was tampered with or is full."""
        reason = self._identity_problem()
        if reason is not None:
            self._open_segment(self._segment + 1)
            self._log.info("break", fields={"reason": reason})
        elif self._offset >= self._config.max_file_bytes:
            previous = segment_name(self._segment)
            self._open_segment(self._segment + 1)
            self._log.info(
                "segment", fields={"previous": previous, "retained_from_seq": self._prune()}
            )

    def _identity_problem(self) -> str | None:
        """Notice a segment deleted, replaced, truncated or appended to behind our back."""
        size = os.fstat(self._fd).st_size
        name = segment_name(self._segment)
        if size != self._offset:
            return f"{name} changed size behind the writer ({self._offset} -> {size} bytes)"
        now = self._clock()
        if abs(now - self._last_identity_check) < 1.0:
            return None
        self._last_identity_check = now
        try:
            same = os.path.samestat(os.stat(self._path()), os.fstat(self._fd))
        except FileNotFoundError:
            same = False
        return None if same else f"{name} was deleted or replaced behind the writer"

    def _prune(self) -> int:
        """Delete segments beyond keep_files; the seq of the oldest line still kept."""
        segments = list_segments(self._dir)
        keep = self._config.keep_files
        if keep > 0 and len(segments) > keep:
            for _, path in segments[: len(segments) - keep]:
                path.unlink(missing_ok=True)
            segments = segments[len(segments) - keep :]
        first = _first_seq(segments[0][1]) if segments else None
        return first if first is not None else self._seq + 1

    def _open_segment(self, number: int) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
        self._segment = number
        self._fd = os.open(self._path(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._offset = os.fstat(self._fd).st_size
        self._last_identity_check = self._clock()

    def _path(self) -> Path:
        return self._dir / segment_name(self._segment)

    def _recover(self) -> None:
        """Continue the chain after a restart, or open a new segment with a break line when
        the log does not end where the head record says it does."""
        segments = list_segments(self._dir)
        head = read_head(self._dir, self._key)
        if not segments and head is None:
            self._open_segment(1)
            return
        last = _last_record(segments[-1][1], self._key) if segments else None
        newest = segments[-1][0] if segments else int(head["segment"][6:12]) if head else 0
        if head is not None:
            self._seq, self._prev = int(head["seq"]), str(head["mac"])
        elif last is not None:
            self._seq, self._prev = int(last["seq"]), str(last["mac"])
        consistent = (
            head is not None
            and last is not None
            and last.get("seq") == head["seq"]
            and last.get("mac") == head["mac"]
            and head["segment"] == segment_name(newest)
        )
        self._open_segment(newest if consistent else newest + 1)
        if not consistent:
            self._log.info("break", fields={"reason": _break_reason(head, last)})


class _Sink:
    """structlog's 'logger': receives the sealed line and appends it to the segment."""

    def __init__(self, log: AuditLog) -> None:
        self.info = log._write


def _first_seq(path: Path) -> int | None:
    try:
        with path.open("r", encoding="utf-8") as handle:
            first = handle.readline()
        return int(json.loads(first)["seq"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _last_record(path: Path, key: bytes) -> dict[str, Any] | None:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 65536))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    if not tail.endswith("\n"):
        return None
    lines = tail.splitlines()
    return parse_line(lines[-1], key) if lines else None


def _break_reason(head: dict[str, Any] | None, last: dict[str, Any] | None) -> str:
    if head is None:
        return "head record missing or invalid at start-up"
    if last is None:
        return f"log does not end in a valid line; head says seq {head['seq']}"
    return f"log ends at seq {last['seq']} but head says seq {head['seq']}"
