"""On PostgreSQL an idle worker wakes on the store's NOTIFY: a committed job starts well before
its poll interval could explain, and again after its LISTEN connection was cut."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psycopg
import pytest

from core.store import Delivery, open_store
from pipeline.queue import SqliteQueue
from tests.conftest import Workspace, wait_for
from tests.pipeline.conftest import add_rules, command_rule, edgehook

POLL_S = 5.0  # far longer than a NOTIFY wake-up: a start within 1 s is the NOTIFY's doing
LISTENERS = "SELECT pid FROM pg_stat_activity WHERE query = 'LISTEN edgehook_jobs'"


def enqueue(url: str, rule: str, n: int) -> int:
    conn = open_store(url)
    try:
        committed = SqliteQueue(conn).enqueue(
            Delivery(
                received_at=time.time(),
                request_id=f"t{n}",
                client="203.0.113.1",
                body_sha256=os.urandom(32).hex(),
                event_type="ADD_ARTIFACT_ALIAS",
                version_string=None,
                event_json=json.dumps({"alias": rule}),
                rule=rule,
                action="command",
                args_json="{}",
            ),
            86400,
        )
    finally:
        conn.close()
    assert committed.job_id is not None
    return committed.job_id


def listeners(url: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [row[0] for row in conn.execute(LISTENERS).fetchall()]


def state(url: str, job_id: int) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT state FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return str(row[0])


def started_within(url: str, job_id: int, since: float) -> float:
    wait_for(lambda: state(url, job_id) != "queued", timeout=POLL_S * 2, what="the claim")
    return time.monotonic() - since


def test_idle_worker_starts_a_committed_job_on_notify(
    workspace: Workspace, tmp_path: Path, pg_url: str
) -> None:
    add_rules(workspace, command_rule("quick", ["/bin/true"]))
    workspace.edit("poll_s = 0.02", f"poll_s = {POLL_S}")
    worker = edgehook(workspace, "worker", env={"EDGEHOOK_STORE_URL": pg_url})
    try:
        wait_for(lambda: len(listeners(pg_url)) == 1, what="the worker's LISTEN")
        first = enqueue(pg_url, "quick", 1)
        assert started_within(pg_url, first, time.monotonic()) < 1.0

        # The LISTEN connection cut (a database failover, a proxy's idle timeout): the worker
        # reconnects on its own and NOTIFY wakes it again.
        (old,) = listeners(pg_url)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (old,))
        wait_for(lambda: listeners(pg_url) not in ([], [old]), what="a new LISTEN")
        second = enqueue(pg_url, "quick", 2)
        assert started_within(pg_url, second, time.monotonic()) < 1.0
        wait_for(lambda: state(pg_url, second) == "succeeded", timeout=POLL_S * 2)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=10)
    assert state(pg_url, first) == "succeeded"


@pytest.mark.slow  # ~3.4 s: a worker process started and stopped
def test_sigterm_stops_an_idle_worker_at_once(workspace: Workspace, pg_url: str) -> None:
    """An idle worker waits poll_s in its selector; SIGTERM ends that wait (the handler writes
    to a pipe in the selector) instead of the worker noticing after up to poll_s (at most 5 s,
    the setting's maximum, used here)."""
    add_rules(workspace, command_rule("quick", ["/bin/true"]))
    workspace.edit("poll_s = 0.02", f"poll_s = {POLL_S}")
    worker = edgehook(workspace, "worker", env={"EDGEHOOK_STORE_URL": pg_url})
    try:
        wait_for(lambda: len(listeners(pg_url)) == 1, what="the worker's LISTEN")
        time.sleep(0.5)  # the LISTEN's first wake-up handled: the worker is in its 5 s wait
        sent = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=10) == 0
        assert time.monotonic() - sent < 2.0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
