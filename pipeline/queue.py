"""The job queue: one documented contract, implemented over the SQLite store.

Contract (every implementation, and the contract tests in tests/pipeline/test_queue.py):
  enqueue(delivery, window_s)      commit one event and its job (the receiver's committer
                                   commits batches through core.store.commit_deliveries,
                                   the same code; tests, tools and benchmarks use this)
  claim(worker, lease_s, now)      the oldest runnable job, leased to `worker`; queued jobs
                                   with the same coalesce key collapse into the newest first
                                   (the rest become `superseded`, never lost)
  heartbeat(job, worker, ...)      extend the lease; False if it was lost (stop the job)
  complete(job, worker, ...)       succeeded, once: False if the lease was lost meanwhile
  fail(job, worker, ...)           transient and attempts left: queued again after a delay;
                                   otherwise failed, with the reason recorded
  release(job, worker, now)        hand a job back (shutdown): queued, attempt not counted
  reap_expired(now)                running jobs whose lease expired (their worker died) are
                                   requeued with the attempt counted, or failed when none left
  request_cancel / retry           operator actions (edgehook jobs cancel|retry)
  get / recent / attempts ...      reads, in pipeline/queueread.py (QueueReads)
Job states are `JobState`. Time is always a parameter (`now`), never read here.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from core.store import (
    Committed,
    Connection,
    Delivery,
    commit_deliveries,
    insert_delivery,
    transaction,
)
from pipeline.queueread import QueueReads
from pipeline.records import AttemptRow, Job, JobRow, JobState

__all__ = ["AttemptRow", "Job", "JobRow", "JobState", "SqliteQueue"]


QUEUED, RUNNING = JobState.QUEUED.value, JobState.RUNNING.value
CANCELLED, SUPERSEDED = JobState.CANCELLED.value, JobState.SUPERSEDED.value

_NOTHING = -1
_CLAIM_TRIES = 3


class SqliteQueue(QueueReads):
    """The queue's state changes; the reads (get, recent, attempts, ...) are QueueReads'."""

    # -- the receiver's side -----------------------------------------------------------------

    def enqueue(self, delivery: Delivery, window_s: float) -> Committed:
        """Commit one delivery and its job, or find its duplicate: `commit_deliveries` for a
        batch of one (the receiver's committer calls that directly with its batches)."""
        return commit_deliveries(self.conn, [delivery], window_s)[0]

    def enqueue_followup(
        self,
        parent: int,
        rule: str,
        action: str,
        args: dict[str, Any],
        event: dict[str, Any],
        now: float,
        max_attempts: int,
    ) -> int:
        """A job the worker queues itself (publishing a model after a retrain)."""
        followup = Delivery(
            received_at=now,
            request_id=f"job:{parent}",
            client="worker",
            body_sha256=f"followup:{parent}:{action}",
            event_type="EDGEHOOK_FOLLOWUP",
            version_string=None,
            event_json=json.dumps(event),
            rule=rule,
            action=action,
            args_json=json.dumps(args),
            max_attempts=max_attempts,
        )
        with transaction(self.conn) as conn:
            return insert_delivery(conn, followup)

    # -- the worker's side -------------------------------------------------------------------

    def claim(self, worker: str, lease_s: float, now: float) -> Job | None:
        for _ in range(_CLAIM_TRIES):
            with transaction(self.conn) as conn:
                job_id = self._pick(conn, now)
                if job_id is None:
                    continue  # another worker is collapsing that key: try again
                if job_id == _NOTHING:
                    return None
                conn.execute(
                    "UPDATE jobs SET state = ?, lease_owner = ?, lease_expires = ?, "
                    "attempts = attempts + 1, updated_at = ? WHERE id = ?",
                    (RUNNING, worker, now + lease_s, now, job_id),
                )
                job = conn.execute(
                    "SELECT jobs.id, rule, action, args_json, event_json, attempts, "
                    "max_attempts, created_at FROM jobs JOIN events ON events.id = jobs.event_id "
                    "WHERE jobs.id = ?",
                    (job_id,),
                ).fetchone()
                conn.execute(
                    "INSERT INTO attempts (job_id, number, worker, started_at) VALUES (?, ?, ?, ?)",
                    (job_id, job[5], worker, now),
                )
                return _job(job)
        return None

    def _pick(self, conn: Connection, now: float) -> int | None:
        """The job to claim (_NOTHING: none runnable; None: try again), with the older queued
        jobs of its coalesce key superseded. On PostgreSQL the oldest runnable row is locked
        with SKIP LOCKED, so workers on other hosts take the next one instead of waiting; a
        coalesce key is collapsed under a transaction advisory lock, taken without waiting
        (a waiting claimer would hold a row the lock's holder must supersede: a deadlock)."""
        postgres = not isinstance(conn, sqlite3.Connection)
        row = conn.execute(
            "SELECT id, coalesce_key FROM jobs WHERE state = ? AND run_after <= ? "  # noqa: S608  # nosec B608
            "ORDER BY id LIMIT 1" + (" FOR UPDATE SKIP LOCKED" if postgres else ""),
            (QUEUED, now),
        ).fetchone()
        if row is None:
            return _NOTHING
        job_id, key = int(row[0]), row[1]
        if key is None:
            return job_id
        if postgres:
            locked = conn.execute("SELECT pg_try_advisory_xact_lock(hashtext(?))", (key,))
            if not locked.fetchone()[0]:
                return None
            # every queued row of the key, locked (a claimer holding one briefly lets it go)
            conn.execute(
                "SELECT id FROM jobs WHERE state = ? AND coalesce_key = ? FOR UPDATE",
                (QUEUED, key),
            )
        newest = int(
            conn.execute(
                "SELECT max(id) FROM jobs WHERE state = ? AND coalesce_key = ?", (QUEUED, key)
            ).fetchone()[0]
        )
        reason = f"superseded by job {newest}"
        conn.execute(
            "UPDATE jobs SET state = ?, superseded_by = ?, finished_at = ?, "
            "updated_at = ?, reason = ? WHERE state = ? AND coalesce_key = ? AND id < ?",
            (SUPERSEDED, newest, now, now, reason, QUEUED, key, newest),
        )
        return newest

    def heartbeat(self, job_id: int, worker: str, lease_s: float, now: float) -> bool:
        with transaction(self.conn) as conn:
            changed = conn.execute(
                "UPDATE jobs SET lease_expires = ?, updated_at = ? WHERE id = ? AND "
                "lease_owner = ? AND state = ?",
                (now + lease_s, now, job_id, worker, RUNNING),
            ).rowcount
        return changed == 1

    def complete(
        self,
        job_id: int,
        worker: str,
        now: float,
        *,
        summary: str = "",
        produced: list[dict[str, str | None]] | None = None,
    ) -> bool:
        with transaction(self.conn) as conn:
            if not self._finish(
                conn, job_id, worker, now, JobState.SUCCEEDED, None, 0, summary=summary
            ):
                return False
            for item in produced or ():
                conn.execute(
                    "INSERT INTO produced (job_id, version_string, artifact_id, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (job_id, item.get("version_string"), item.get("artifact_id"), now),
                )
        return True

    def fail(
        self,
        job_id: int,
        worker: str,
        now: float,
        reason: str,
        *,
        transient: bool,
        retry_delay_s: float,
        exit_code: int | None = None,
    ) -> JobState | None:
        """The job's new state, or None if this worker no longer held it."""
        with transaction(self.conn) as conn:
            row = conn.execute(
                "SELECT attempts, max_attempts, cancel_requested FROM jobs WHERE id = ? AND "  # noqa: S608  # nosec B608
                "lease_owner = ? AND state = ?" + _for_update(conn),
                (job_id, worker, RUNNING),
            ).fetchone()
            if row is None:
                return None
            attempts, max_attempts, cancel = int(row[0]), int(row[1]), bool(row[2])
            if transient and attempts < max_attempts and not cancel:
                self._end_attempt(conn, job_id, now, "retry", reason, exit_code)
                self._requeue(conn, job_id, now + retry_delay_s, now, reason)
                return JobState.QUEUED
            state = JobState.CANCELLED if cancel else JobState.FAILED
            self._finish(conn, job_id, worker, now, state, reason, exit_code)
            return state

    def cancelled(self, job_id: int, worker: str, now: float, reason: str) -> bool:
        with transaction(self.conn) as conn:
            return self._finish(conn, job_id, worker, now, JobState.CANCELLED, reason, None)

    def release(self, job_id: int, worker: str, now: float) -> bool:
        with transaction(self.conn) as conn:
            changed = conn.execute(
                "UPDATE jobs SET state = ?, run_after = ?, lease_owner = NULL, "
                "lease_expires = NULL, attempts = attempts - 1, updated_at = ? WHERE id = ? "
                "AND lease_owner = ? AND state = ?",
                (QUEUED, now, now, job_id, worker, RUNNING),
            ).rowcount
            if changed:
                self._end_attempt(conn, job_id, now, "handed back", "worker shut down", None)
        return changed == 1

    def reap_expired(self, now: float) -> list[tuple[int, JobState]]:
        """Requeue (or fail) running jobs whose lease expired; returns what became of each."""
        out = []
        with transaction(self.conn) as conn:
            rows = conn.execute(
                "SELECT id, attempts, max_attempts, cancel_requested FROM jobs "  # noqa: S608  # nosec B608
                "WHERE state = ? AND lease_expires < ?" + _for_update(conn, skip_locked=True),
                (RUNNING, now),
            ).fetchall()
            for job_id, attempts, max_attempts, cancel in rows:
                reason = "lease expired: its worker died or stalled"
                self._end_attempt(conn, job_id, now, "lost", reason, None)
                if cancel or attempts >= max_attempts:
                    state = JobState.CANCELLED if cancel else JobState.FAILED
                    conn.execute(
                        "UPDATE jobs SET state = ?, finished_at = ?, updated_at = ?, reason = ?, "
                        "lease_owner = NULL, lease_expires = NULL WHERE id = ?",
                        (state.value, now, now, reason, job_id),
                    )
                else:
                    state = JobState.QUEUED
                    self._requeue(conn, job_id, now, now, reason)
                out.append((int(job_id), state))
        return out

    # -- operators -------------------------------------------------------------------------

    def request_cancel(self, job_id: int, now: float) -> JobState | None:
        """Queued: cancelled at once. Running: flagged; its worker kills it. None: no job."""
        with transaction(self.conn) as conn:
            state = _locked_state(conn, job_id)
            if state is None:
                return None
            if state == JobState.QUEUED:
                conn.execute(
                    "UPDATE jobs SET state = ?, finished_at = ?, updated_at = ?, "
                    "reason = 'cancelled by operator' WHERE id = ?",
                    (CANCELLED, now, now, job_id),
                )
                return JobState.CANCELLED
            if state == JobState.RUNNING:
                conn.execute(
                    "UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ?",
                    (now, job_id),
                )
            return state

    def retry(self, job_id: int, now: float) -> JobState | None:
        """A failed, cancelled or superseded job queued again with a fresh set of attempts."""
        with transaction(self.conn) as conn:
            state = _locked_state(conn, job_id)
            if state is None:
                return None
            if state not in (JobState.FAILED, JobState.CANCELLED, JobState.SUPERSEDED):
                return state
            conn.execute(
                "UPDATE jobs SET state = ?, run_after = ?, attempts = 0, "
                "cancel_requested = 0, finished_at = NULL, reason = NULL, superseded_by = NULL, "
                "coalesce_key = NULL, updated_at = ? WHERE id = ?",
                (QUEUED, now, now, job_id),
            )
            return JobState.QUEUED

    # -- helpers ---------------------------------------------------------------------------

    def _finish(
        self,
        conn: Connection,
        job_id: int,
        worker: str,
        now: float,
        state: JobState,
        reason: str | None,
        exit_code: int | None,
        summary: str | None = None,
    ) -> bool:
        changed = conn.execute(
            "UPDATE jobs SET state = ?, finished_at = ?, updated_at = ?, reason = ?, "
            "summary = coalesce(?, summary), lease_owner = NULL, lease_expires = NULL "
            "WHERE id = ? AND lease_owner = ? AND state = ?",
            (state.value, now, now, reason, summary, job_id, worker, RUNNING),
        ).rowcount
        if changed:
            self._end_attempt(conn, job_id, now, state.value, reason, exit_code)
        return changed == 1

    @staticmethod
    def _requeue(conn: Connection, job_id: int, run_after: float, now: float, reason: str) -> None:
        conn.execute(
            "UPDATE jobs SET state = ?, run_after = ?, lease_owner = NULL, lease_expires = NULL, "
            "updated_at = ?, reason = ? WHERE id = ?",
            (QUEUED, run_after, now, reason, job_id),
        )

    @staticmethod
    def _end_attempt(
        conn: Connection,
        job_id: int,
        now: float,
        outcome: str,
        reason: str | None,
        exit_code: int | None,
    ) -> None:
        conn.execute(
            "UPDATE attempts SET finished_at = ?, outcome = ?, reason = ?, exit_code = ? "
            "WHERE id = (SELECT max(id) FROM attempts WHERE job_id = ?) AND finished_at IS NULL",
            (now, outcome, reason, exit_code, job_id),
        )


def _for_update(conn: Connection, *, skip_locked: bool = False) -> str:
    """PostgreSQL: lock the rows read for the update that follows (SQLite's BEGIN IMMEDIATE
    already holds the whole database)."""
    if isinstance(conn, sqlite3.Connection):
        return ""
    return " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE"


def _locked_state(conn: Connection, job_id: int) -> JobState | None:
    """A job's state, its row locked for the update that follows; None: no such job."""
    row = conn.execute(
        "SELECT state FROM jobs WHERE id = ?" + _for_update(conn),  # noqa: S608  # nosec B608
        (job_id,),
    ).fetchone()
    return None if row is None else JobState(row[0])


def _job(row: Any) -> Job:
    return Job(
        id=int(row[0]),
        rule=row[1],
        action=row[2],
        args=json.loads(row[3]),
        event=json.loads(row[4]),
        attempt=int(row[5]),
        max_attempts=int(row[6]),
        created_at=float(row[7]),
    )
