"""Fault matrix: the data directory's disk fills up while the receiver runs.

How: the receiver runs in its own user and mount namespace (`unshare --user
--map-root-user --mount`, no privileges needed where unprivileged user namespaces are
allowed), with its data directory on a 4 MiB tmpfs; the test reaches that filesystem
through /proc/<pid>/root and fills it with a file. Deliveries then get 503 + Retry-After
(never a 2xx for an event not stored, never a 500); once the file is removed the receiver
takes deliveries again without a restart, and every 202 has its event and job.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgehook.template import sample_body
from tests.conftest import Workspace, free_port, signed


def namespaces_missing() -> str:
    """Why this machine cannot run the test ("" when it can)."""
    if shutil.which("unshare") is None:
        return "unshare is missing (util-linux; scripts/setup.sh installs it)"
    probe = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            "mount -t tmpfs -o size=1m tmpfs /mnt 2>/dev/null || mount -t tmpfs tmpfs /tmp",
        ],
        capture_output=True,
    )
    if probe.returncode != 0:
        return (
            "unprivileged user and mount namespaces are not allowed here (a container without "
            "them, or kernel.apparmor_restrict_unprivileged_userns=1)"
        )
    return ""


CANNOT = namespaces_missing()
pytestmark = pytest.mark.skipif(bool(CANNOT), reason=CANNOT)


def post(port: int, workspace: Workspace, tag: str) -> tuple[int, dict[str, object], str]:
    body = sample_body(event_author=tag)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    conn.request("POST", "/webhook", body=body, headers=signed(workspace, body))
    reply = conn.getresponse()
    answer = json.loads(reply.read() or b"{}")
    retry_after = reply.getheader("retry-after") or ""
    conn.close()
    return reply.status, answer, retry_after


def fill(path: Path) -> int:
    """Write until the filesystem says ENOSPC; the bytes written."""
    written = 0
    block = b"\0" * 65536
    with path.open("wb", buffering=0) as handle:
        try:
            while True:
                written += handle.write(block)
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC
    # the last partial pages too
    with path.open("ab", buffering=0) as handle:
        try:
            while True:
                written += handle.write(b"\0" * 512)
        except OSError:
            pass
    return written


def test_disk_full_gives_503_then_resumes_and_loses_nothing(workspace: Workspace) -> None:
    workspace.edit("requests_per_second = 5.0", "requests_per_second = 1000.0")
    workspace.edit("burst = 30", "burst = 1000")
    data = workspace.dir / "data"
    data.mkdir(exist_ok=True)
    port = free_port()
    log = workspace.dir / "serve.log"
    script = (
        f'mount -t tmpfs -o size=4m,mode=0700 tmpfs "{data}" && exec "{sys.executable}" '
        f'-m edgehook --config "{workspace.config_path}" serve'
    )
    with log.open("wb") as handle:
        process = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
            cwd=workspace.dir,
            env={**os.environ, "EDGEHOOK_PORT": str(port)},
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        inside = Path(f"/proc/{process.pid}/root") / str(data).lstrip("/")
        deadline = time.monotonic() + 20
        accepted: list[int] = []
        while time.monotonic() < deadline and not accepted:
            assert process.poll() is None, log.read_text()
            try:
                status, answer, _ = post(port, workspace, "warmup")
                if status == 202:
                    accepted.append(int(str(answer["job_id"])))
            except OSError:
                time.sleep(0.1)
        assert accepted, log.read_text()
        for i in range(5):
            status, answer, _ = post(port, workspace, f"before{i}")
            assert status == 202, answer
            accepted.append(int(str(answer["job_id"])))

        filler = inside / "filler"
        assert fill(filler) > 0
        refused = []
        for i in range(20):  # each a new event: the store has to grow, and cannot
            status, answer, retry_after = post(port, workspace, f"full{i}")
            assert status in (202, 503), (status, answer)
            if status == 202:  # a page SQLite still had free; it is committed
                accepted.append(int(str(answer["job_id"])))
            else:
                assert retry_after.isdigit(), retry_after
                refused.append(answer)
        assert refused, "the full disk never showed"
        assert process.poll() is None  # still serving

        filler.unlink()
        for i in range(5):
            status, answer, _ = post(port, workspace, f"after{i}")
            assert status == 202, (status, answer, log.read_text()[-2000:])
            accepted.append(int(str(answer["job_id"])))

        # SQLite resolves /proc/<pid>/root to "/" (outside the namespace): read a copy
        # (the receiver is idle now, so the database and its WAL are consistent).
        copy = workspace.dir / "copy"
        copy.mkdir()
        for name in ("edgehook.db", "edgehook.db-wal"):
            if (inside / name).exists():
                shutil.copyfile(inside / name, copy / name)
        with sqlite3.connect(copy / "edgehook.db") as conn:
            jobs = {row[0] for row in conn.execute("SELECT id FROM jobs")}
            events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        assert set(accepted) <= jobs, sorted(set(accepted) - jobs)
        assert events >= len(accepted)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "Traceback" not in log.read_text()
