"""What each page shows, as plain data: the page renders it and its JSON twin returns it, so
scripts and people see one truth. Reads only: the store, the audit chains, the registry."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core import watched as core_watched
from core.auditread import records
from core.config import Config
from core.store import Connection
from pipeline.queue import JobRow, JobState, SqliteQueue

STATES = tuple(s.value for s in JobState)
ERROR_STATES = (JobState.FAILED.value, JobState.CANCELLED.value, JobState.SUPERSEDED.value)
LOG_CHUNK = 65536  # bytes of a job's log per answer


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def job_dict(row: JobRow) -> dict[str, Any]:
    """A job as the list and the API show it: `error` is the reason a job ended badly (or
    why its last attempt failed, while it waits for the next)."""
    values = asdict(row)
    values["error"] = row.reason if row.state in ERROR_STATES or row.reason else None
    if row.state == JobState.SUCCEEDED.value:
        values["error"] = None
    return values


def queue_depth(conn: Connection) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for state, n in conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall():
        counts[str(state)] = int(n)
    return counts


def oldest_queued(conn: Connection) -> float | None:
    row = conn.execute(
        "SELECT min(created_at) FROM jobs WHERE state = ?", (JobState.QUEUED.value,)
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


WATCHED_FIELDS = (
    "artifact",
    "version_string",
    "outcome",
    "last_poll_at",
    "last_ok_at",
    "last_error",
    "last_error_at",
    "failures",
)


def watched(conn: Connection) -> list[dict[str, Any]]:
    """Each watched alias, by name, read through the table's owner (core/watched.py)."""
    rows = core_watched.all_rows(conn)
    return [{k: rows[name][k] for k in WATCHED_FIELDS} for name in sorted(rows)]


def jobs_page(
    queue: SqliteQueue, state: str | None, limit: int, before: int | None
) -> dict[str, Any]:
    rows = queue.recent(state, limit + 1, before)
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "state": state,
        "jobs": [job_dict(r) for r in rows],
        "next_before": rows[-1].id if more and rows else None,
    }


def job_detail(queue: SqliteQueue, config: Config, job_id: int) -> dict[str, Any] | None:
    row = queue.get(job_id)
    if row is None:
        return None
    event = queue.conn.execute(
        "SELECT events.id, received_at, request_id, client, event_type, events.version_string, "
        "event_json FROM events JOIN jobs ON jobs.event_id = events.id WHERE jobs.id = ?",
        (job_id,),
    ).fetchone()
    attempts = [asdict(a) for a in queue.attempts(job_id)]
    for attempt in attempts:
        end = attempt["finished_at"]
        attempt["duration_s"] = None if end is None else round(end - attempt["started_at"], 3)
    first_start = attempts[0]["started_at"] if attempts else None
    detail = job_dict(row)
    detail["attempt_list"] = attempts
    detail["queue_wait_s"] = None if first_start is None else round(first_start - row.created_at, 3)
    detail["event"] = None if event is None else _event(event)
    numbers = [a["number"] for a in attempts]
    detail["logs"] = [n for n in numbers if _log_path(config, job_id, n).exists()]
    return detail


def _event(row: tuple[Any, ...]) -> dict[str, Any]:
    try:
        body = json.loads(row[6])
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    # Argument values stay out of the page (they may be sensitive); their names are shown.
    args = body.pop("args", None)
    return {
        "id": row[0],
        "received_at": row[1],
        "request_id": row[2],
        "client": row[3],
        "event_type": row[4],
        "version_string": row[5],
        "fields": {k: v for k, v in body.items() if v not in (None, "", [], {})},
        "arg_names": sorted(args) if isinstance(args, dict) else [],
    }


def _log_path(config: Config, job_id: int, attempt: int) -> Path:
    return config.jobs_dir / str(job_id) / f"attempt-{attempt}.log"


def job_log(
    queue: SqliteQueue, config: Config, job_id: int, attempt: int | None, offset: int
) -> dict[str, Any] | None:
    """A piece of an attempt's log from `offset` (the page follows it while the job runs)."""
    row = queue.get(job_id)
    if row is None:
        return None
    number = attempt or row.attempts
    path = _log_path(config, job_id, number)
    text, end = "", offset
    if number >= 1 and path.exists():
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            start = max(0, min(offset, size)) if offset >= 0 else max(0, size - LOG_CHUNK)
            handle.seek(start)
            data = handle.read(LOG_CHUNK)
            end = start + len(data)
            text = data.decode("utf-8", "replace")
    return {
        "job_id": job_id,
        "attempt": number,
        "offset": end,
        "text": text,
        "running": row.state == JobState.RUNNING.value,
        "state": row.state,
    }


def operator_lines(config: Config, limit: int = 200) -> list[dict[str, Any]]:
    """The operator chain's newest lines (it is small: one line per action by hand)."""
    lines = list(records(config.audit_dir / "operator"))
    return lines[-limit:][::-1]
