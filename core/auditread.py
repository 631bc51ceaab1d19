"""Reading the audit log: `verify` the chain, `show` filtered lines, `tail` new ones.

verify names the first damage and its kind:
  edited      a line's MAC does not match its text (or the line is not a log line)
  inserted    a line that is not part of the chain (forged, or a copy of an earlier line)
  removed     lines missing from the middle (a seq gap, or a whole segment deleted)
  reordered   authentic lines out of order
  truncated   lines missing at the end (fewer than the head record says), a partial last
              line, or the head record missing so the end cannot be proven
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from core.audit import GENESIS, list_segments, parse_line, read_head


@dataclass(frozen=True)
class Damage:
    kind: str
    file: str
    line: int
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.file} line {self.line}: {self.detail}"


@dataclass
class Report:
    lines: int = 0
    segments: int = 0
    last_seq: int = 0
    damage: Damage | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.damage is None


@dataclass(frozen=True)
class _Line:
    file: str
    number: int
    raw: str
    complete: bool
    record: dict[str, Any] | None


def _lines(directory: Path, key: bytes) -> Iterator[_Line]:
    for _, path in list_segments(directory):
        with path.open("r", encoding="utf-8", errors="replace", newline="\n") as handle:
            for number, raw in enumerate(handle, start=1):
                complete = raw.endswith("\n")
                text = raw[:-1] if complete else raw
                yield _Line(path.name, number, text, complete, parse_line(text, key))


def verify(directory: Path, key: bytes) -> Report:
    report = Report(segments=len(list_segments(directory)))
    if report.segments == 0:
        report.damage = Damage("removed", str(directory), 0, "no audit segments found")
        return report
    present, retained_from = _survey(directory, key, report)
    # Pass 2: walk the chain.
    expected_seq: int | None = None
    expected_prev = GENESIS
    seen: set[int] = set()
    pending: _Line | None = None  # an unauthentic line, judged by the line after it
    for line in _lines(directory, key):
        report.lines += 1
        if not line.complete:
            report.damage = Damage("truncated", line.file, line.number, "partial last line")
            return report
        if pending is not None:
            report.damage = _judge_bad(pending, line, expected_seq, expected_prev)
            return report
        record = line.record
        if record is None:
            pending = line
            continue
        seq, prev = int(record["seq"]), str(record["prev"])
        if expected_seq is None:
            expected_seq = 1 if retained_from is None or seq == 1 else retained_from
            if seq == expected_seq and expected_seq > 1:
                report.notes.append(
                    f"log starts at seq {seq}: earlier segments pruned by retention"
                )
                expected_prev = prev
        if seq == expected_seq and prev == expected_prev:
            seen.add(seq)
            expected_seq, expected_prev = seq + 1, str(record["mac"])
            report.last_seq = seq
            continue
        if seq > expected_seq:
            kind = "reordered" if expected_seq in present else "removed"
            detail = (
                f"seq {expected_seq} appears later"
                if kind == "reordered"
                else f"seq {expected_seq}..{seq - 1} missing"
            )
        elif seq in seen:
            kind, detail = "inserted", f"a second copy of seq {seq}"
        elif seq < expected_seq:
            kind, detail = "reordered", f"seq {seq} appears after seq {expected_seq - 1}"
        else:
            kind, detail = "edited", f"seq {seq} does not chain to seq {seq - 1}"
        report.damage = Damage(kind, line.file, line.number, detail)
        return report
    if pending is not None:
        report.damage = _judge_bad(pending, None, expected_seq, expected_prev)
        return report
    report.damage = _judge_end(directory, key, report.last_seq)
    return report


def _survey(directory: Path, key: bytes, report: Report) -> tuple[set[int], int | None]:
    """Pass 1: which seqs exist (authentic lines only), where retention says the log
    starts; recorded breaks become the report's notes."""
    present: set[int] = set()
    retained_from: int | None = None
    for line in _lines(directory, key):
        if line.record is not None:
            present.add(int(line.record["seq"]))
            if line.record.get("kind") == "segment":
                retained_from = int(line.record["retained_from_seq"])
            if line.record.get("kind") == "break":
                report.notes.append(
                    f"recorded break at seq {line.record['seq']}: {line.record.get('reason')}"
                )
    return present, retained_from


def _judge_end(directory: Path, key: bytes, last_seq: int) -> Damage | None:
    """A cut at the end: the head record says where the log ends."""
    head = read_head(directory, key)
    if head is None:
        return Damage(
            "truncated",
            "head.json",
            0,
            "head record missing or invalid: the log's end cannot be proven",
        )
    if int(head["seq"]) > last_seq:
        return Damage(
            "truncated",
            str(head["segment"]),
            0,
            f"log ends at seq {last_seq}, head says {head['seq']}",
        )
    return None


def _judge_bad(
    bad: _Line, after: _Line | None, expected_seq: int | None, expected_prev: str
) -> Damage:
    # If the chain carries on past the bad line as if it were not there, it was inserted;
    # otherwise a real line was altered.
    record = after.record if after is not None else None
    if (
        record is not None
        and record.get("prev") == expected_prev
        and (expected_seq is None or int(record["seq"]) == expected_seq)
    ):
        return Damage("inserted", bad.file, bad.number, "line is not part of the chain")
    return Damage("edited", bad.file, bad.number, "line does not match its MAC")


# -- show / tail ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    since: float | None = None
    until: float | None = None
    decision: str | None = None
    client: str | None = None
    event: str | None = None
    lost: bool = False

    def accepts(self, record: dict[str, Any]) -> bool:
        if self.lost and not is_lost(record):
            return False
        ts = _timestamp(record.get("ts"))
        if self.since is not None and (ts is None or ts < self.since):
            return False
        if self.until is not None and (ts is None or ts > self.until):
            return False
        if self.decision is not None and record.get("decision") != self.decision:
            return False
        if self.client is not None and record.get("client") != self.client:
            return False
        return self.event is None or self.event.lower() in str(record.get("event", "")).lower()


def is_lost(record: dict[str, Any]) -> bool:
    """A delivery that proved itself (token and signature) and still was not committed: 200
    (ignored, duplicate) and 202 are the answers that lose nothing."""
    return (
        record.get("kind") == "request"
        and record.get("proven") is True
        and record.get("status") not in (200, 202)
    )


# The receiver, the worker and operator commands each write a chain of their own (an audit
# chain has exactly one writer at a time).
CHAINS = (
    ("receiver", ""),
    ("worker", "worker"),
    ("operator", "operator"),
    ("predictor", "predictor"),
    ("watch", "watch"),
)


def chains(audit_dir: Path) -> list[tuple[str, Path]]:
    """The chains that exist under the audit directory (with `server.workers` > 1, the
    receiver processes after the first write `receiver-N`)."""
    found = []
    extra = sorted((p.name, p.name) for p in audit_dir.glob("receiver-*") if p.name[9:].isdigit())
    for name, sub in [*CHAINS[:1], *extra, *CHAINS[1:]]:
        path = audit_dir / sub if sub else audit_dir
        if list_segments(path) or (path / "head.json").exists():
            found.append((name, path))
    return found


def merged_records(audit_dir: Path) -> list[dict[str, Any]]:
    """Every chain's records, in time order, each tagged with its chain."""
    out: list[dict[str, Any]] = []
    for name, path in chains(audit_dir):
        out.extend({**record, "chain": name} for record in records(path))
    return sorted(out, key=lambda record: str(record.get("ts", "")))


def records(directory: Path) -> Iterator[dict[str, Any]]:
    """Every parseable line, authentic or not (verify is the tool for authenticity)."""
    for _, path in list_segments(directory):
        yield from _file_records(path)


COLUMNS = (
    ("ts", 23),
    ("status", 6),
    ("decision", 10),
    ("reason", 18),
    ("client", 22),
    ("event", 60),
    ("job_id", 6),
)


# `audit show --lost`: what an operator needs to find the delivery in W&B's history.
LOST_COLUMNS = (
    ("ts", 23),
    ("status", 6),
    ("reason", 18),
    ("request_id", 16),
    ("event", 60),
    ("body_sha256", 64),
)


def table_header(columns: tuple[tuple[str, int], ...] = COLUMNS) -> str:
    return "  ".join(name.upper().ljust(width) for name, width in columns).rstrip()


def table_row(record: dict[str, Any], columns: tuple[tuple[str, int], ...] = COLUMNS) -> str:
    if record.get("kind") not in ("request", None):
        detail = {
            k: v for k, v in record.items() if k not in ("v", "seq", "ts", "kind", "prev", "mac")
        }
        return f"{str(record.get('ts', ''))[:23]:23}  [{record.get('kind')}] {json.dumps(detail)}"
    cells = []
    for name, width in columns:
        value = record.get(name)
        text = "" if value is None else str(value)
        cells.append(text[:width].ljust(width))
    return "  ".join(cells).rstrip()


def tail(
    directory: Path,
    out: Callable[[dict[str, Any]], None],
    *,
    follow: bool,
    lines: int = 10,
    poll_s: float = 0.5,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Print the last `lines` records, then (with follow) new ones as they are written,
    following rotation into new segments. The newest segment's history is read through the
    handle that then follows it, so no line written meanwhile is skipped."""
    segments = list_segments(directory)
    history: list[dict[str, Any]] = []
    for _, path in segments[:-1]:
        history.extend(_file_records(path))
    number, handle = (
        (segments[-1][0], segments[-1][1].open("r", encoding="utf-8")) if segments else (0, None)
    )
    pending = ""
    if handle is not None:
        pending, _ = _drain(handle, history.append)
    for record in history[-lines:] if lines > 0 else []:
        out(record)
    if not follow:
        if handle is not None:
            handle.close()
        return
    while not stop():
        if handle is not None:
            pending, emitted = _drain(handle, out, pending)
            if emitted:
                continue
        newer = [s for s in list_segments(directory) if s[0] > number]
        if newer and not pending:
            if handle is not None:
                handle.close()
            number, handle = newer[0][0], newer[0][1].open("r", encoding="utf-8")
            continue
        time.sleep(poll_s)
    if handle is not None:
        handle.close()


def _drain(
    handle: TextIO, out: Callable[[dict[str, Any]], None], pending: str = ""
) -> tuple[str, int]:
    """Emit every complete line readable now. Returns a trailing partial line (to complete
    on the next call) and how many lines were read."""
    count = 0
    while True:
        raw = handle.readline()
        if not raw:
            return pending, count
        if not raw.endswith("\n"):
            return pending + raw, count
        count += 1
        record = _load(pending + raw)
        pending = ""
        if record is not None:
            out(record)


def _file_records(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for raw in handle:
            record = _load(raw)
            if record is not None:
                yield record


def _load(raw: str) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def parse_time(text: str, now: float) -> float:
    """`2026-11-25T08:00`, `2026-11-25`, or a relative `30m`, `2h`, `7d` ago. ValueError if not."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].isdigit():
        return now - int(text[:-1]) * units[text[-1]]
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()
