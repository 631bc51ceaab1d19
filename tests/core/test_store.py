"""The store: migrations, and per-delivery queries that stay indexed as the store grows."""

import sqlite3
from pathlib import Path

import pytest

from core.errors import StoreUnavailable
from core.store import (
    DUPLICATE_QUERY,
    MIGRATIONS,
    PRODUCED_QUERY,
    SCHEMA_VERSION,
    migrate,
    open_store,
)


def plan(conn: sqlite3.Connection, query: str, params: tuple[object, ...]) -> str:
    rows = conn.execute(f"EXPLAIN QUERY PLAN {query}", params).fetchall()
    return " | ".join(str(row[-1]) for row in rows)


def test_per_delivery_queries_never_scan_a_table(tmp_path: Path) -> None:
    conn = open_store(tmp_path / "s.db")
    for query, params in ((DUPLICATE_QUERY, ("x" * 64, 0.0)), (PRODUCED_QUERY, ("v", "a"))):
        text = plan(conn, query, params)
        assert "SCAN" not in text, text


def test_migrations_apply_in_order_and_are_idempotent(tmp_path: Path) -> None:
    conn = open_store(tmp_path / "s.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(MIGRATIONS)
    assert migrate(conn) == SCHEMA_VERSION  # nothing left to do
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"events", "jobs", "attempts", "produced"} <= tables


def test_a_version_1_store_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    old = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            old.execute(statement)
    old.execute(
        "INSERT INTO events (received_at, request_id, client, body_sha256, event_type, "
        "event_json) VALUES (1, 'r', 'c', 'd', 'ADD_ARTIFACT_ALIAS', '{}')"
    )
    old.execute(
        "INSERT INTO jobs (event_id, rule, action, args_json, created_at, updated_at) "
        "VALUES (1, 'r', 'download', '{}', 1, 1)"
    )
    old.execute("PRAGMA user_version = 1")
    old.close()
    conn = open_store(path)
    row = conn.execute("SELECT state, attempts, max_attempts FROM jobs").fetchone()
    assert row == ("queued", 0, 4)


def test_a_store_from_a_newer_edgehook_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreUnavailable, match="newer than this edgehook"):
        open_store(path)


def test_the_cross_source_duplicate_check_is_an_index_search(tmp_path: Path) -> None:
    """A webhook looks for the watcher's event with its key by index, not by scanning the
    webhooks that share that key (a scan per delivery cut committed deliveries/s 3.5x)."""
    from core.store import WATCH_CLIENT, Delivery, _across_sources

    conn = open_store(tmp_path / "s.db")
    webhook = Delivery(1.0, "r", "203.0.113.1", "d", "ADD_ARTIFACT_ALIAS", None, "{}", "rule",
                       "command", "{}", dedupe_key="k")  # fmt: skip
    watcher = Delivery(1.0, "r", WATCH_CLIENT, "d", "ADD_ARTIFACT_ALIAS", None, "{}", "rule",
                       "command", "{}", dedupe_key="k")  # fmt: skip
    for d in (webhook, watcher):
        query, params = _across_sources(d, 0.0)
        plan = " ".join(str(row) for row in conn.execute("EXPLAIN QUERY PLAN " + query, params))
        assert "SEARCH events USING COVERING INDEX events_by_dedupe_key" in plan, plan
    query, params = _across_sources(webhook, 0.0)
    plan = " ".join(str(r) for r in conn.execute("EXPLAIN QUERY PLAN " + query, params))
    assert "(dedupe_key=? AND client=? AND received_at>?)" in plan, plan
    conn.close()
