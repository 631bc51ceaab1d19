"""The store: one SQLite file in WAL mode, shared by the receiver and the worker.

Durability: synchronous=FULL. In WAL mode NORMAL keeps the file consistent but may lose
the last commits on power loss, and a Jetson in a living room loses power; a 202 promises
the event is on disk, so every commit fsyncs the WAL. The receiver groups concurrent
deliveries into one transaction (committer.py) to keep that affordable on eMMC/SD cards.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, overload

from core.errors import StoreUnavailable

if TYPE_CHECKING:
    from core.pgstore import PgStore

# A store connection: SQLite's own, or core.pgstore's pool with the same interface.
Connection: TypeAlias = "sqlite3.Connection | PgStore"

# Each entry migrates the schema from version N-1 to N; applied in order at start-up.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        received_at REAL NOT NULL,
        request_id TEXT NOT NULL,
        client TEXT NOT NULL,
        body_sha256 TEXT NOT NULL,
        event_type TEXT NOT NULL,
        version_string TEXT,
        event_json TEXT NOT NULL
    );
    CREATE INDEX events_by_digest ON events (body_sha256, received_at);
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        event_id INTEGER NOT NULL REFERENCES events (id),
        rule TEXT NOT NULL,
        action TEXT NOT NULL,
        args_json TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX jobs_by_state ON jobs (state, id);
    """,
    # 2: the worker's side of the queue (leases, attempts, retries, coalescing, loop guard).
    """
    ALTER TABLE jobs ADD COLUMN coalesce_key TEXT;
    ALTER TABLE jobs ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 4;
    ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN run_after REAL NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
    ALTER TABLE jobs ADD COLUMN lease_expires REAL;
    ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN superseded_by INTEGER REFERENCES jobs (id);
    ALTER TABLE jobs ADD COLUMN reason TEXT;
    ALTER TABLE jobs ADD COLUMN summary TEXT;
    ALTER TABLE jobs ADD COLUMN finished_at REAL;
    CREATE INDEX jobs_runnable ON jobs (state, run_after, id);
    CREATE INDEX jobs_by_event ON jobs (event_id);
    CREATE INDEX jobs_by_coalesce_key ON jobs (coalesce_key, state, id);
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL REFERENCES jobs (id),
        number INTEGER NOT NULL,
        worker TEXT NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL,
        outcome TEXT,
        reason TEXT,
        exit_code INTEGER
    );
    CREATE INDEX attempts_by_job ON attempts (job_id, number);
    CREATE TABLE produced (
        id INTEGER PRIMARY KEY,
        job_id INTEGER REFERENCES jobs (id),
        version_string TEXT,
        artifact_id TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX produced_by_version ON produced (version_string);
    CREATE INDEX produced_by_artifact ON produced (artifact_id);
    """,
    # 3: duplicates by meaning: the digest of the body's canonical JSON (sorted keys, no
    # whitespace), so a re-serialised delivery is a duplicate as well as a byte-identical one.
    """
    ALTER TABLE events ADD COLUMN canonical_sha256 TEXT;
    CREATE INDEX events_by_canonical ON events (canonical_sha256, received_at);
    """,
    # 4: pull mode. The same artifact version and alias reached by a webhook and by the
    # watcher is one event (dedupe_key); `watched` is what the watcher saw and acted on.
    # The index leads with the client as well: many webhooks about one version share a key,
    # and a webhook looks only for the watcher's events (without it: a scan per delivery).
    """
    ALTER TABLE events ADD COLUMN dedupe_key TEXT;
    CREATE INDEX events_by_dedupe_key ON events (dedupe_key, client, received_at);
    CREATE TABLE watched (
        artifact TEXT PRIMARY KEY,
        artifact_id TEXT,
        version_string TEXT,
        acted_at REAL,
        job_id INTEGER,
        outcome TEXT,
        last_poll_at REAL,
        last_ok_at REAL,
        last_error TEXT,
        last_error_at REAL,
        failures INTEGER NOT NULL DEFAULT 0
    );
    """,
)


class JobState(str, Enum):
    """A job's states: the `state` column's whole vocabulary (the queue moves jobs between them)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"


QUEUED = JobState.QUEUED.value
WATCH_CLIENT = "watch"  # the `client` of events the watcher commits
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path, *, busy_timeout_s: float = 2.0) -> sqlite3.Connection:
    """An autocommit connection with edgehook's pragmas; transactions go through `transaction`."""
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@overload
def transaction(conn: sqlite3.Connection) -> AbstractContextManager[sqlite3.Connection]: ...
@overload
def transaction(conn: Connection) -> AbstractContextManager[Connection]: ...
def transaction(conn: Connection) -> AbstractContextManager[Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error. Every write goes through here."""
    if isinstance(conn, sqlite3.Connection):
        return _sqlite_transaction(conn)
    return conn.transaction()


@contextmanager
def _sqlite_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION; returns the version found before."""
    with transaction(conn):
        found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"store schema is version {found}, newer than this edgehook ({SCHEMA_VERSION}); "
                "upgrade edgehook"
            )
        for version in range(found, SCHEMA_VERSION):
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return found


@overload
def open_store(path: Path, *, busy_timeout_s: float = 2.0) -> sqlite3.Connection: ...
@overload
def open_store(path: Path | str, *, busy_timeout_s: float = 2.0) -> Connection: ...
def open_store(path: Path | str, *, busy_timeout_s: float = 2.0) -> Connection:
    """Connect and migrate (a Path: SQLite; a postgresql:// URL: PostgreSQL); StoreUnavailable
    with a readable reason when that fails."""
    if isinstance(path, str):
        # psycopg only where a PostgreSQL store is configured: the receiver stays small
        from core import pgstore

        return pgstore.open_store(path, timeout_s=max(busy_timeout_s, 2.0))
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = connect(path, busy_timeout_s=busy_timeout_s)
        migrate(conn)
    except (sqlite3.Error, OSError) as exc:
        raise StoreUnavailable(f"cannot open the store at {path}: {exc}") from exc
    return conn


def open_read_only(path: Path) -> sqlite3.Connection:
    """A connection that can neither create the file nor write (`edgehook doctor`)."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def schema_version(path: Path) -> int:
    """The schema version of an existing store, read without migrating it."""
    try:
        with contextlib.closing(open_read_only(path)) as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"{path} cannot be read: {exc}") from exc


def migrate_target(target: Path | str) -> tuple[int, int, str]:
    """`edgehook store migrate`: (the version found, the version now, where, redacted)."""
    if isinstance(target, str):
        from core import pgstore  # psycopg: only for a PostgreSQL store

        pg = pgstore.PgStore(target)
        try:
            return pgstore.migrate(pg), pgstore.SCHEMA_VERSION, pg.where
        finally:
            pg.close()
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.closing(connect(target)) as conn:
            return migrate(conn), SCHEMA_VERSION, str(target)
    except (sqlite3.Error, OSError) as exc:
        raise StoreUnavailable(f"cannot open the store at {target}: {exc}") from exc


@dataclass(frozen=True)
class Delivery:
    """An authenticated, rule-matched event about to be committed with its job."""

    received_at: float
    request_id: str
    client: str
    body_sha256: str
    event_type: str
    version_string: str | None
    event_json: str
    rule: str
    action: str
    args_json: str
    artifact_id: str | None = None
    coalesce_key: str | None = None
    max_attempts: int = 4
    canonical_sha256: str | None = None  # None: only byte-identical bodies are duplicates
    # rule, event type, artifact id and alias: a webhook and the watcher reaching the same
    # version are one event (None when the event names no artifact id)
    dedupe_key: str | None = None


@dataclass(frozen=True)
class Committed:
    """What became of a delivery: a new job, the job of an earlier identical delivery, or
    nothing because the event is about an artifact this device produced (the loop guard)."""

    job_id: int | None
    duplicate: bool = False
    produced_here: bool = False


def commit_deliveries(
    conn: Connection, deliveries: Sequence[Delivery], duplicate_window_s: float
) -> list[Committed]:
    """Commit each delivery and its job in one transaction, or find the job of an identical
    delivery (the same bytes, or the same canonical JSON) received within the window, or
    drop an event about a version this device produced. All or nothing: on error nothing
    is committed."""
    if not isinstance(conn, sqlite3.Connection):
        from core import pgstore  # loaded already: conn came from it

        return pgstore.commit_deliveries(conn, deliveries, duplicate_window_s)
    results = []
    with transaction(conn):
        for d in deliveries:
            if produced_here(conn, d.version_string, d.artifact_id):
                results.append(Committed(job_id=None, produced_here=True))
                continue
            earlier = d.received_at - duplicate_window_s
            row = conn.execute(DUPLICATE_QUERY, (d.body_sha256, earlier)).fetchone()
            if row is None and d.canonical_sha256 is not None:
                canonical = (d.canonical_sha256, earlier)
                row = conn.execute(CANONICAL_DUPLICATE_QUERY, canonical).fetchone()
            if row is None and d.dedupe_key is not None:
                row = conn.execute(*_across_sources(d, earlier)).fetchone()
            if row is not None:
                results.append(Committed(job_id=int(row[0]), duplicate=True))
                continue
            job_id = insert_delivery(conn, d)
            results.append(Committed(job_id=job_id, duplicate=False))
    return results


def insert_delivery(conn: Connection, d: Delivery) -> int:
    """Insert an event and its queued job; the one place that writes either table's rows
    (the caller holds the transaction). Returns the job's id."""
    event_id = conn.execute(
        "INSERT INTO events (received_at, request_id, client, body_sha256, event_type, "
        "version_string, event_json, canonical_sha256, dedupe_key) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (d.received_at, d.request_id, d.client, d.body_sha256, d.event_type, d.version_string,
         d.event_json, d.canonical_sha256, d.dedupe_key),
    ).fetchone()[0]  # fmt: skip
    job_id = conn.execute(
        "INSERT INTO jobs (event_id, rule, action, args_json, state, created_at, updated_at, "
        "run_after, coalesce_key, max_attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "RETURNING id",
        (event_id, d.rule, d.action, d.args_json, QUEUED, d.received_at, d.received_at,
         d.received_at, d.coalesce_key, d.max_attempts),
    ).fetchone()[0]  # fmt: skip
    return int(job_id)


# Driven from the digest index, then jobs by event: both indexed, whatever the store's size.
DUPLICATE_QUERY = (
    "SELECT id FROM jobs WHERE event_id = (SELECT id FROM events WHERE body_sha256 = ? "
    "AND received_at >= ? ORDER BY id LIMIT 1) ORDER BY id LIMIT 1"
)
CANONICAL_DUPLICATE_QUERY = DUPLICATE_QUERY.replace("body_sha256", "canonical_sha256")


def _across_sources(d: Delivery, earlier: float) -> tuple[str, tuple[object, ...]]:
    """The job of the same version and alias reached the other way: for the watcher, any
    event ever (the device acted on that version); for a webhook, what the watcher queued
    within the duplicate window (webhooks among themselves keep their byte rules)."""
    if d.client == WATCH_CLIENT:
        query = DUPLICATE_QUERY.replace("body_sha256 = ? AND received_at >= ?", "dedupe_key = ?")
        return query, (d.dedupe_key,)
    query = DUPLICATE_QUERY.replace(
        "body_sha256 = ? AND received_at >= ?", "dedupe_key = ? AND received_at >= ? AND client = ?"
    )
    return query, (d.dedupe_key, earlier, WATCH_CLIENT)


PRODUCED_QUERY = "SELECT 1 FROM produced WHERE version_string = ? OR artifact_id = ? LIMIT 1"


def produced_here(conn: Connection, version_string: str | None, artifact_id: str | None) -> bool:
    """True when this device uploaded that artifact version (its own output re-firing)."""
    if version_string is None and artifact_id is None:
        return False
    row = conn.execute(PRODUCED_QUERY, (version_string, artifact_id)).fetchone()
    return row is not None
