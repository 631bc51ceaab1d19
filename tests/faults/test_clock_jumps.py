"""Fault matrix: the wall clock stepping backwards and forwards (NTP correcting a Jetson that
booted without a real-time clock, an operator running `date -s`) around lease expiry, job
timeouts and the duplicate window. Leases live in the store as wall-clock times; the
worker's own intervals, timeouts and deadlines are monotonic."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from core.audit import AuditLog
from core.store import open_store
from edgehook.template import sample_body
from pipeline.queue import SqliteQueue
from pipeline.worker import Worker
from tests.conftest import Clock, Workspace, make_client, signed, wait_for
from tests.pipeline.conftest import add_rules, attempts, command_rule, enqueue, job, python_command


class SteppedClock:
    """time.time() plus an offset a test can step while the worker runs."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.mark.parametrize("step_s", [3600.0, -3600.0, 86400.0 * 365])
def test_a_clock_step_mid_job_neither_requeues_nor_times_out_nor_runs_it_twice(
    workspace: Workspace, tmp_path: Path, step_s: float
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    # The child says it has started, then works until the test tells it to finish.
    argv = python_command(
        tmp_path,
        f"""
        import os, time
        open("{runs}/started", "w").close()
        while not os.path.exists("{runs}/finish"):
            time.sleep(0.02)
        with open("{runs}/done", "a") as f:
            f.write("x")
        """,
    )
    # a lease far shorter than the step, a timeout shorter than the step too
    config = add_rules(
        workspace,
        command_rule("steady", argv, timeout_s=60),
        worker="lease_s = 5\nheartbeat_s = 1\n",
    )
    job_id = enqueue(config, "steady")
    conn = open_store(config.store_path)
    audit = AuditLog(config.audit_dir / "worker", b"k" * 32, config.audit, clock=time.time)
    clock = SteppedClock()
    worker = Worker(config, SqliteQueue(conn), audit, {}, None, clock=clock)

    failures: list[AssertionError] = []

    def step() -> None:
        try:
            wait_for(lambda: (runs / "started").exists(), timeout=30, what="for the child")
            stepped_at = time.time()
            clock.offset = step_s
            # The worker has lived on the stepped clock through several heartbeats and
            # reaps (each 1 s) once the store holds a lease write made under the stepped
            # clock at least 2.5 s after the step.
            wait_for(lambda: lived_stepped(stepped_at), timeout=30, what="for stepped heartbeats")
        except AssertionError as exc:
            failures.append(exc)
        finally:
            (runs / "finish").touch()

    def lived_stepped(stepped_at: float) -> bool:
        with contextlib.closing(sqlite3.connect(config.store_path)) as db:
            (written,) = db.execute(
                "SELECT updated_at FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        unstepped = float(written) - step_s
        return abs(unstepped - time.time()) < 2.0 and unstepped >= stepped_at + 2.5

    stepper = threading.Thread(target=step)
    stepper.start()
    worker.run(once=True)
    stepper.join()
    assert failures == []
    audit.close()
    conn.close()
    row = job(config, job_id)
    assert row["state"] == "succeeded", row
    assert attempts(config, job_id) == ["succeeded"]
    assert (runs / "done").read_text() == "x"


def test_the_duplicate_window_across_clock_steps(workspace: Workspace, clock: Clock) -> None:
    client, _ = make_client(workspace.config(), clock)
    body = sample_body()
    with client:
        first = client.post("/webhook", content=body, headers=signed(workspace, body)).json()
        clock.advance(-7200)  # backwards: the first delivery now looks like the future
        again = client.post("/webhook", content=body, headers=signed(workspace, body))
        assert again.status_code == 200 and again.json()["job_id"] == first["job_id"]
        clock.advance(7200 + 23 * 3600)  # forwards, still inside the 24 h window
        again = client.post("/webhook", content=body, headers=signed(workspace, body))
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
        clock.advance(2 * 3600)  # past the window: a new job, as configured
        later = client.post("/webhook", content=body, headers=signed(workspace, body))
        assert later.status_code == 202 and later.json()["job_id"] != first["job_id"]
