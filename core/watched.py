"""The `watched` table: what the watcher saw of each alias and what it acted on. Its only
reader and writer (the watcher writes, `edgehook doctor` reads)."""

from __future__ import annotations

from typing import Any

from core.store import Connection, transaction


def row(conn: Connection, artifact: str) -> dict[str, Any] | None:
    """The alias's row as a column -> value dict, or None before its first poll."""
    cursor = conn.execute("SELECT * FROM watched WHERE artifact = ?", (artifact,))
    found = cursor.fetchone()
    if found is None:
        return None
    return dict(zip([c[0] for c in cursor.description or ()], found, strict=True))


def all_rows(conn: Connection) -> dict[str, dict[str, Any]]:
    """Every alias's row by artifact name."""
    cursor = conn.execute("SELECT * FROM watched")
    names = [c[0] for c in cursor.description or ()]
    return {r[0]: dict(zip(names, r, strict=True)) for r in cursor.fetchall()}


def acted(
    conn: Connection,
    artifact: str,
    *,
    artifact_id: str,
    version_string: str,
    job_id: int | None,
    outcome: str,
    now: float,
) -> None:
    """The alias moved and the watcher acted (queued, recorded, ignored...): a good poll."""
    with transaction(conn):
        conn.execute(
            "INSERT INTO watched (artifact, artifact_id, version_string, acted_at, job_id, "
            "outcome, last_poll_at, last_ok_at, last_error, failures) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, 0) ON CONFLICT (artifact) DO UPDATE SET "
            "artifact_id = excluded.artifact_id, version_string = excluded.version_string, "
            "acted_at = excluded.acted_at, job_id = excluded.job_id, "
            "outcome = excluded.outcome, last_poll_at = excluded.last_poll_at, "
            "last_ok_at = excluded.last_ok_at, last_error = NULL, failures = 0",
            (artifact, artifact_id, version_string, now, job_id, outcome, now, now),
        )


def polled_ok(conn: Connection, artifact: str, now: float) -> None:
    """A good poll that found the alias where it was."""
    with transaction(conn):
        conn.execute(
            "UPDATE watched SET last_poll_at = ?, last_ok_at = ?, last_error = NULL, "
            "failures = 0 WHERE artifact = ?",
            (now, now, artifact),
        )


def poll_failed(conn: Connection, artifact: str, error: str, now: float) -> None:
    """A failed poll: the error kept, failures counted."""
    with transaction(conn):
        conn.execute(
            "INSERT INTO watched (artifact, last_poll_at, last_error, last_error_at, failures) "
            "VALUES (?, ?, ?, ?, 1) ON CONFLICT (artifact) DO UPDATE SET "
            "last_poll_at = excluded.last_poll_at, last_error = excluded.last_error, "
            "last_error_at = excluded.last_error_at, failures = watched.failures + 1",
            (artifact, now, error, now),
        )
