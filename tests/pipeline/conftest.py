"""Fixtures for the worker: a workspace with rules, a queue, and helpers to run workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from core.audit import AuditLog
from core.config import Config
from core.store import Delivery, open_store
from pipeline.queue import SqliteQueue
from pipeline.worker import Worker
from tests.conftest import Workspace
from tests.conftest import wait_for as wait_for  # moved to tests/conftest; still importable here

SCRIPT = """\
import json, os, sys, time
mode = sys.argv[1]
"""


def add_rules(workspace: Workspace, rules: str, worker: str = "") -> Config:
    text = workspace.config_path.read_text()
    text += "\n[worker]\nretry_base_s = 0\npoll_s = 0.02\n" + worker + "\n" + rules
    workspace.config_path.write_text(text)
    return workspace.config()


def command_rule(
    name: str, argv: list[str], *, timeout_s: float = 60, extra: str = "", args: str = ""
) -> str:
    rule = textwrap.dedent(f"""
        [[rules]]
        name = "{name}"
        event = "ADD_ARTIFACT_ALIAS"
        alias = "{name}"
        action = "command"
        command = {json.dumps(argv)}
        timeout_s = {timeout_s}
        {extra}
        """)
    return rule + (f"[rules.args]\n{args}\n" if args else "")


def enqueue(
    config: Config,
    rule: str,
    *,
    action: str = "command",
    n: int = 0,
    args: Mapping[str, object] | None = None,
    event: Mapping[str, object] | None = None,
    coalesce_key: str | None = None,
    max_attempts: int = 4,
) -> int:
    conn = open_store(config.store_path)
    try:
        committed = SqliteQueue(conn).enqueue(
            Delivery(
                received_at=time.time(),
                request_id=f"t{n}",
                client="203.0.113.1",
                body_sha256=os.urandom(32).hex(),
                event_type="ADD_ARTIFACT_ALIAS",
                version_string=None,
                event_json=json.dumps(event or {"alias": rule}),
                rule=rule,
                action=action,
                args_json=json.dumps(args or {}),
                coalesce_key=coalesce_key,
                max_attempts=max_attempts,
            ),
            86400,
        )
    finally:
        conn.close()
    assert committed.job_id is not None
    return committed.job_id


@pytest.fixture
def run_worker() -> Iterator[object]:
    def run(
        config: Config,
        env: dict[str, str] | None = None,
        wandb_key: str | None = None,
        audit_key: bytes = b"k" * 32,
    ) -> Worker:
        conn = open_store(config.store_path)
        audit = AuditLog(config.audit_dir / "worker", audit_key, config.audit, clock=time.time)
        worker = Worker(config, SqliteQueue(conn), audit, env or {}, wandb_key)
        worker.run(once=True)
        audit.close()
        conn.close()
        return worker

    yield run


def job(config: Config, job_id: int) -> dict[str, object]:
    conn = open_store(config.store_path)
    try:
        row = SqliteQueue(conn).get(job_id)
        assert row is not None
        return row.__dict__
    finally:
        conn.close()


def attempts(config: Config, job_id: int) -> list[str | None]:
    conn = open_store(config.store_path)
    try:
        return [a.outcome for a in SqliteQueue(conn).attempts(job_id)]
    finally:
        conn.close()


def log_text(config: Config, job_id: int, attempt: int = 1) -> str:
    return (config.jobs_dir / str(job_id) / f"attempt-{attempt}.log").read_text()


def python_command(tmp: Path, body: str) -> list[str]:
    script = tmp / f"job_{abs(hash(body))}.py"
    script.write_text(textwrap.dedent(body))
    return [sys.executable, str(script)]


def marking_job(tmp: Path, seconds: float) -> tuple[Path, list[str]]:
    """A job command that sleeps `seconds`, then appends "x" to RUNS/done-<job id>: the
    folder (writable by the sandboxed child) and the command. Run exactly once, the file
    holds "x"."""
    runs = tmp / "runs"
    runs.mkdir(mode=0o777)
    os.chmod(runs, 0o777)
    argv = python_command(
        tmp,
        f"""
        import os, time
        time.sleep({seconds})
        with open("{runs}/done-" + os.environ["EDGEHOOK_JOB_ID"], "a") as f:
            f.write("x")
        """,
    )
    return runs, argv


def processes_with(marker: str) -> list[str]:
    """Command lines of live processes that mention `marker` (read from /proc, no ps)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(f"{entry.name} {cmdline}")
    return found


def edgehook(
    workspace: Workspace, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`edgehook ARGS` as a background process; its output goes to worker-N.log."""
    log = workspace.dir / f"worker-{uuid.uuid4().hex[:8]}.log"
    with log.open("wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "edgehook", "--config", str(workspace.config_path), *args],
            cwd=workspace.dir,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
        )
