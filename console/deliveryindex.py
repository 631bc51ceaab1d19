"""The deliveries index: the receiver chains' request lines in a SQLite file of the console's
own (data_dir/console/deliveries.db), so /deliveries pages by keyset and filters by index at
a million lines instead of reading files.

It is a cache, derived from the audit log and rebuilt from it when missing: each segment is
read once, from where the last refresh stopped (its byte offset), up to its last complete
line. A segment that shrank or was replaced is read again from the start. Rows stay after
retention prunes a segment, so the history survives rotation. Authenticity is not judged
here (`/audit` verifies the chains); the index only serves the review.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from core.audit import list_segments
from core.auditread import chains, is_lost

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    chain TEXT NOT NULL, segment TEXT NOT NULL, inode INTEGER NOT NULL,
    offset INTEGER NOT NULL, PRIMARY KEY (chain, segment)
);
CREATE TABLE IF NOT EXISTS rows (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, chain TEXT NOT NULL, segment TEXT NOT NULL,
    seq INTEGER, kind TEXT NOT NULL, status INTEGER, decision TEXT, reason TEXT, client TEXT,
    event_type TEXT, event TEXT, rule TEXT, job_id INTEGER, request_id TEXT, body_sha256 TEXT,
    lost INTEGER NOT NULL, latency_ms REAL, detail TEXT
);
CREATE INDEX IF NOT EXISTS rows_by_ts ON rows (ts, id);
CREATE INDEX IF NOT EXISTS rows_by_decision ON rows (decision, ts, id);
CREATE INDEX IF NOT EXISTS rows_by_status ON rows (status, ts, id);
CREATE INDEX IF NOT EXISTS rows_by_reason ON rows (reason, ts, id);
CREATE INDEX IF NOT EXISTS rows_by_client ON rows (client, ts, id);
CREATE INDEX IF NOT EXISTS rows_by_event_type ON rows (event_type, ts, id);
CREATE INDEX IF NOT EXISTS rows_by_lost ON rows (lost, ts, id);
CREATE INDEX IF NOT EXISTS rows_by_segment ON rows (chain, segment);
CREATE TABLE IF NOT EXISTS counts (
    decision TEXT NOT NULL, reason TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (decision, reason)
);
"""
COLUMNS = (
    "id, ts, chain, seq, kind, status, decision, reason, client, event_type, event, rule, "
    "job_id, request_id, body_sha256, lost, latency_ms, detail"
)
BATCH_LINES = 20_000  # lines per transaction while catching up


@dataclass(frozen=True)
class Filters:
    """The /deliveries filters (the page's and the API's query parameters)."""

    decision: str | None = None
    status: int | None = None
    reason: str | None = None
    client: str | None = None
    event_type: str | None = None
    since: float | None = None
    until: float | None = None
    lost: bool = False

    def where(self) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for column in ("decision", "status", "reason", "client", "event_type"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.lost:
            clauses.append("lost = 1")
        if self.since is not None:
            clauses.append("ts >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("ts <= ?")
            params.append(self.until)
        return clauses, params


class DeliveryIndex:
    def __init__(self, path: Path, audit_dir: Path) -> None:
        self.path = path
        self.audit_dir = audit_dir
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._conn = self._connect()
        self._conn.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # a cache: rebuilt from the log if lost
        return conn

    def close(self) -> None:
        self._conn.close()

    # -- reading ---------------------------------------------------------------------------

    def page(
        self, filters: Filters, limit: int, after: tuple[float, int] | None = None
    ) -> list[dict[str, Any]]:
        """Newest first; `after` is the (ts, id) of the last row of the previous page."""
        clauses, params = filters.where()
        if after is not None:
            clauses.append("(ts, id) < (?, ?)")
            params.extend(after)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        # Only fixed column names and clauses from Filters.where(); every value is a parameter.
        sql = f"SELECT {COLUMNS} FROM rows {where} ORDER BY ts DESC, id DESC LIMIT ?"  # noqa: S608  # nosec B608
        conn = self._connect()
        try:
            cursor = conn.execute(sql, (*params, limit))
            names = [d[0] for d in cursor.description]
            return [_row(dict(zip(names, values, strict=True))) for values in cursor]
        finally:
            conn.close()

    def counts(self) -> list[tuple[str, str, int]]:
        """Deliveries by decision and reason, flood summaries' counts included."""
        with self._lock:
            rows = self._conn.execute("SELECT decision, reason, n FROM counts ORDER BY 1, 2")
            return [(str(d), str(r), int(n)) for d, r, n in rows]

    # -- catching up with the log ----------------------------------------------------------

    def refresh(self, *, wait: bool = True, max_lines: int | None = None) -> int:
        """Index what the receiver chains gained since the last call; returns lines read.
        With wait=False, returns 0 at once when another thread is refreshing."""
        if not self._lock.acquire(blocking=wait):
            return 0
        try:
            total = 0
            for chain, directory in chains(self.audit_dir):
                if not chain.startswith("receiver"):
                    continue
                for _, path in list_segments(directory):
                    total += self._segment(chain, path, None if max_lines is None
                                           else max_lines - total)  # fmt: skip
                    if max_lines is not None and total >= max_lines:
                        return total
            return total
        finally:
            self._lock.release()

    def _segment(self, chain: str, path: Path, budget: int | None) -> int:
        try:
            info = path.stat()
        except FileNotFoundError:
            return 0
        known = self._conn.execute(
            "SELECT inode, offset FROM files WHERE chain = ? AND segment = ?", (chain, path.name)
        ).fetchone()
        offset = 0
        if known is not None:
            inode, offset = int(known[0]), int(known[1])
            if inode != info.st_ino or info.st_size < offset:  # replaced or cut: read again
                self._forget(chain, path.name)
                offset = 0
        if info.st_size == offset:
            return 0
        read = 0
        with path.open("rb") as handle:
            handle.seek(offset)
            while budget is None or read < budget:
                chunk = handle.readlines(BATCH_LINES * 200)
                complete = [line for line in chunk if line.endswith(b"\n")]
                if not complete:
                    break
                offset += sum(len(line) for line in complete)
                self._store(chain, path.name, info.st_ino, offset, complete)
                read += len(complete)
                if len(complete) < len(chunk):
                    break
        return read

    def _forget(self, chain: str, segment: str) -> None:
        with self._conn:
            self._conn.execute("DELETE FROM rows WHERE chain = ? AND segment = ?", (chain, segment))
            self._conn.execute(
                "DELETE FROM files WHERE chain = ? AND segment = ?", (chain, segment)
            )

    def _store(self, chain: str, segment: str, inode: int, offset: int, lines: list[bytes]) -> None:
        rows = []
        counted: dict[tuple[str, str], int] = {}
        for raw in lines:
            row = _parse(raw, chain, segment, counted)
            if row is not None:
                rows.append(row)
        self._conn.execute("BEGIN")
        try:
            self._conn.executemany(
                "INSERT INTO rows (ts, chain, segment, seq, kind, status, decision, reason, "
                "client, event_type, event, rule, job_id, request_id, body_sha256, lost, "
                "latency_ms, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._conn.executemany(
                "INSERT INTO counts (decision, reason, n) VALUES (?, ?, ?) ON CONFLICT "
                "(decision, reason) DO UPDATE SET n = n + excluded.n",
                [(d, r, n) for (d, r), n in counted.items()],
            )
            self._conn.execute(
                "INSERT INTO files (chain, segment, inode, offset) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (chain, segment) DO UPDATE SET inode = excluded.inode, "
                "offset = excluded.offset",
                (chain, segment, inode, offset),
            )
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")


def _parse(
    raw: bytes, chain: str, segment: str, counted: dict[tuple[str, str], int]
) -> tuple[Any, ...] | None:
    try:
        record = json.loads(raw)
        ts = datetime.fromisoformat(record["ts"]).timestamp()
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(record, dict):
        return None
    kind = record.get("kind")
    if kind == "summary":
        by_reason = record.get("by_reason") or {}
        for key, n in by_reason.items() if isinstance(by_reason, dict) else ():
            reason = str(key).partition(" ")[2] or str(key)
            counted[("rejected", reason)] = counted.get(("rejected", reason), 0) + _int(n)
        detail = {k: record.get(k) for k in ("since", "suppressed", "by_reason",
                                              "top_clients", "distinct_clients")}  # fmt: skip
        clients = _int(record.get("distinct_clients"))
        return (ts, chain, segment, record.get("seq"), "summary", None, "rejected",
                "flood_summary", f"{clients} clients", None, None, None, None, None, None, 0,
                None, json.dumps(detail))  # fmt: skip
    if kind != "request":
        return None
    decision, reason = str(record.get("decision")), str(record.get("reason"))
    counted[(decision, reason)] = counted.get((decision, reason), 0) + 1
    event = record.get("event")
    event_type = str(event).split(" ", 1)[0] if event else None
    return (ts, chain, segment, record.get("seq"), "request", record.get("status"), decision,
            reason, record.get("client"), event_type, event, record.get("rule"),
            record.get("job_id"), record.get("request_id"), record.get("body_sha256"),
            int(is_lost(record)), record.get("latency_ms"), None)  # fmt: skip


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _row(values: dict[str, Any]) -> dict[str, Any]:
    values["lost"] = bool(values["lost"])
    detail = values.pop("detail")
    values["summary"] = json.loads(detail) if detail else None
    return values
