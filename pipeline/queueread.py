"""The queue's read side: the rows `edgehook jobs` and the console show, and the worker's
cheap polls. Reads only; every state change is SqliteQueue's (pipeline/queue.py), which
extends this class, so callers keep one object."""

from __future__ import annotations

from typing import Any

from core.store import Connection
from pipeline.records import AttemptRow, JobRow, JobState

QUEUED = JobState.QUEUED.value

_ROW = (
    "SELECT jobs.id, state, rule, action, attempts, max_attempts, created_at, updated_at, "
    "finished_at, run_after, reason, summary, events.version_string, superseded_by, "
    "cancel_requested, lease_owner FROM jobs JOIN events ON events.id = jobs.event_id"
)


class QueueReads:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def get(self, job_id: int) -> JobRow | None:
        row = self.conn.execute(f"{_ROW} WHERE jobs.id = ?", (job_id,)).fetchone()
        return None if row is None else _job_row(row)

    def recent(
        self, state: str | None = None, limit: int = 50, before: int | None = None
    ) -> list[JobRow]:
        """Newest first; `before` pages by keyset (ids below it), fast at any depth."""
        clauses: list[str] = []
        params: list[object] = []
        if state:
            clauses.append("state = ?")
            params.append(state)
        if before is not None:
            clauses.append("jobs.id < ?")
            params.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.conn.execute(
            f"{_ROW} {where} ORDER BY jobs.id DESC LIMIT ?", (*params, limit)
        ).fetchall()
        return [_job_row(row) for row in rows]

    def attempts(self, job_id: int) -> list[AttemptRow]:
        rows = self.conn.execute(
            "SELECT number, worker, started_at, finished_at, outcome, reason, exit_code "
            "FROM attempts WHERE job_id = ? ORDER BY id",
            (job_id,),
        ).fetchall()
        return [AttemptRow(*row) for row in rows]

    def runnable(self, now: float) -> bool:
        """Cheap poll: is there anything to claim?"""
        return (
            self.conn.execute(
                "SELECT 1 FROM jobs WHERE state = ? AND run_after <= ? LIMIT 1", (QUEUED, now)
            ).fetchone()
            is not None
        )

    def superseded_by(self, job_id: int) -> list[int]:
        rows = self.conn.execute(
            "SELECT id FROM jobs WHERE superseded_by = ? ORDER BY id", (job_id,)
        ).fetchall()
        return [int(r[0]) for r in rows]

    def cancel_requested(self, job_id: int) -> bool:
        row = self.conn.execute(
            "SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        return bool(row and row[0])


def _job_row(row: Any) -> JobRow:
    names = [f.name for f in JobRow.__dataclass_fields__.values()]
    values = dict(zip(names, row, strict=True))
    values["cancel_requested"] = bool(values["cancel_requested"])
    return JobRow(**values)
