"""Fault matrix: the audit log deleted, truncated or edited while the receiver is running.
The receiver keeps serving (every delivery 202 and committed), the writer starts a new
segment whose first line is a `break` record saying what it found (when the damage is
visible to it: a file deleted, replaced or resized), and `edgehook audit verify` names the
damage. An in-place edit of the same size is invisible to the writer; verify finds it."""

from __future__ import annotations

import http.client
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.audit import list_segments
from edgehook.template import sample_body
from tests.conftest import (
    Server,
    Workspace,
    free_port,
    run_edgehook,
    signed,
    start_server,
    stop_server,
)


@pytest.fixture
def server(workspace: Workspace) -> Iterator[Server]:
    server = start_server(workspace, free_port())
    yield server
    stop_server(server)


def deliver(workspace: Workspace, server: Server, tag: str) -> int:
    body = sample_body(event_author=tag)
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/webhook", body=body, headers=signed(workspace, body))
    reply = conn.getresponse()
    answer = json.loads(reply.read())
    conn.close()
    assert reply.status == 202, answer
    return int(answer["job_id"])


def delete(segment: Path) -> None:
    segment.unlink()


def truncate(segment: Path) -> None:
    data = segment.read_bytes()
    segment.write_bytes(data[: len(data) // 2])


def replace_edited(segment: Path) -> None:
    """What an editor does: write a changed copy, rename it over the original."""
    text = segment.read_text()
    assert '"status":202' in text
    copy = segment.with_suffix(".tmp")
    copy.write_text(text.replace('"status":202', '"status":200', 1))
    copy.replace(segment)


def edit_in_place(segment: Path) -> None:
    """Same size, same inode (dd conv=notrunc): a 202 made to read 200."""
    data = segment.read_bytes()
    at = data.index(b'"status":202')
    with segment.open("r+b") as handle:
        handle.seek(at)
        handle.write(b'"status":200')


DAMAGE = {
    "deleted": (delete, "deleted or replaced", ("removed", "truncated")),
    "truncated": (truncate, "changed size", ("truncated", "removed", "edited")),
    "replaced": (replace_edited, "deleted or replaced", ("edited",)),
    "edited-in-place": (edit_in_place, None, ("edited",)),
}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damage_while_running_is_recorded_and_serving_goes_on(
    workspace: Workspace, server: Server, how: str
) -> None:
    damage, break_reason, verdicts = DAMAGE[how]
    audit = workspace.dir / "data" / "audit"
    before = [deliver(workspace, server, f"before{i}") for i in range(3)]
    time.sleep(0.3)  # the lines are written as the responses start
    (number, segment), *_ = list_segments(audit)
    damage(segment)
    time.sleep(1.1)  # the writer re-checks the file's identity at most once a second
    after = [deliver(workspace, server, f"after{i}") for i in range(3)]

    with sqlite3.connect(workspace.dir / "data" / "edgehook.db") as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM jobs")}
    assert set(before + after) <= stored  # nothing acknowledged is lost

    time.sleep(0.3)
    report = run_edgehook("audit", "verify", cwd=workspace.dir, config=workspace.config_path)
    assert report.returncode == 1, report.stdout
    assert any(word in report.stdout + report.stderr for word in verdicts), report.stdout
    shown = run_edgehook("audit", "show", "--json", cwd=workspace.dir, config=workspace.config_path)
    records = [json.loads(line) for line in shown.stdout.splitlines() if line.startswith("{")]
    breaks = [r for r in records if r.get("kind") == "break"]
    if break_reason is None:
        assert not breaks  # invisible to the writer: only verify can tell
    else:
        assert breaks and break_reason in str(breaks[0].get("reason")), breaks
        newest = max(n for n, _ in list_segments(audit))
        assert newest > number  # a new segment started with the break
    accepted_after = [
        r for r in records if r.get("decision") == "accepted" and r.get("job_id") in after
    ]
    assert len(accepted_after) == 3  # the deliveries after the damage are in the log
