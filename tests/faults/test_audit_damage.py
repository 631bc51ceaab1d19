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

pytestmark = pytest.mark.slow  # a running receiver damaged several ways


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


# (damage, the break the writer records or None, what verify reports: kind, where, why).
EDITED = "edited: audit-000001.jsonl line 3: line does not match its MAC"
DAMAGE = {
    "deleted": (delete, "deleted or replaced", "removed: audit-000002.jsonl line 1: seq 1.."),
    "truncated": (
        truncate,
        "changed size",
        "truncated: audit-000001.jsonl line 3: partial last line",
    ),
    "replaced": (replace_edited, "deleted or replaced", EDITED),
    "edited-in-place": (edit_in_place, None, EDITED),
}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damage_while_running_is_recorded_and_serving_goes_on(
    workspace: Workspace, server: Server, how: str
) -> None:
    damage, break_reason, verdict = DAMAGE[how]
    audit = workspace.dir / "data" / "audit"
    # Each audit line is written before its response starts: no waiting needed.
    before = [deliver(workspace, server, f"before{i}") for i in range(3)]
    (number, segment), *_ = list_segments(audit)
    damage(segment)
    if break_reason is not None:
        # The writer checks its file's identity at most once a second (its own clock):
        # deliver until it has noticed (a new segment), bounded. Their lines went where
        # the damage put them; they are in the store all the same.
        deadline = time.monotonic() + 10
        while max((n for n, _ in list_segments(audit)), default=0) <= number:
            assert time.monotonic() < deadline, "the writer never noticed the damage"
            before.append(deliver(workspace, server, f"probe{len(before)}"))
            time.sleep(0.1)
    after = [deliver(workspace, server, f"after{i}") for i in range(3)]

    with sqlite3.connect(workspace.dir / "data" / "edgehook.db") as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM jobs")}
    assert set(before + after) <= stored  # nothing acknowledged is lost

    report = run_edgehook("audit", "verify", cwd=workspace.dir, config=workspace.config_path)
    assert report.returncode == 1, report.stdout
    assert f"receiver: DAMAGED: {verdict}" in report.stdout, report.stdout
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
