"""The receiver killed (SIGKILL) in the middle of a burst of signed deliveries: every
delivery that got a 202 has its event and job in the store, and nothing is half-written."""

from __future__ import annotations

import http.client
import json
import signal
import sqlite3
import threading
import time

from edgehook.template import sample_body
from tests.conftest import Workspace, free_port, signed, start_server


def test_sigkill_mid_burst_loses_no_acknowledged_event(workspace: Workspace) -> None:
    workspace.edit("requests_per_second = 5.0", "requests_per_second = 100000.0")
    workspace.edit("burst = 30", "burst = 100000")
    port = free_port()
    server = start_server(workspace, port)
    accepted: list[int] = []
    refused: list[str] = []
    lock = threading.Lock()

    def sender(offset: int) -> None:
        for i in range(400):
            body = sample_body(event_author=f"burst{offset}x{i}")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("POST", "/webhook", body=body, headers=signed(workspace, body))
                reply = conn.getresponse()
                text = reply.read()
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    refused.append(type(exc).__name__)
                return  # the receiver is gone
            finally:
                # closed on every path: a socket left to the garbage collector raises a
                # ResourceWarning, an error under this suite's filterwarnings
                conn.close()
            if reply.status == 202:
                with lock:
                    accepted.append(int(json.loads(text)["job_id"]))

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while len(accepted) < 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    for thread in threads:
        thread.join()
    counts = f"{len(accepted)} accepted, {len(refused)} refused ({sorted(set(refused))})"
    assert len(accepted) >= 150, f"the burst did not get going: {counts}"
    assert refused, f"the kill landed after the burst: {counts}"
    store = workspace.dir / "data" / "edgehook.db"
    with sqlite3.connect(store) as conn:
        jobs = {
            row[0]: row[1]
            for row in conn.execute(
                "SELECT jobs.id, events.id FROM jobs LEFT JOIN events ON events.id = jobs.event_id"
            )
        }
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        orphans = conn.execute(
            "SELECT count(*) FROM events WHERE id NOT IN (SELECT event_id FROM jobs)"
        ).fetchone()
    missing = [job for job in accepted if job not in jobs]
    assert missing == [], f"acknowledged but not stored: {missing[:10]} ({counts})"
    assert all(event is not None for event in jobs.values()), "a job without its event"
    assert orphans[0] == 0, f"{orphans[0]} events without a job"
    # ...and the receiver comes back on the same store, numbering on from where it was.
    again = start_server(workspace, free_port())
    try:
        body = sample_body(event_author="after-restart")
        conn2 = http.client.HTTPConnection("127.0.0.1", int(again.url.rsplit(":", 1)[1]))
        conn2.request("POST", "/webhook", body=body, headers=signed(workspace, body))
        reply = conn2.getresponse()
        assert reply.status == 202, f"after restart: {reply.status} {reply.read()!r}"
        assert json.loads(reply.read())["job_id"] > max(jobs)
        conn2.close()
    finally:
        again.process.terminate()
        again.process.wait(timeout=10)
