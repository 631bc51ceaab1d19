"""`edgehook jobs list|show|logs|cancel|retry`: operating the queue from the shell.

Operator actions are audited in their own chain (audit/operator/), written under a lock so
two commands at once cannot interleave it.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from core.audit import AuditLog
from core.config import Config
from core.credentials import load_audit_key
from core.errors import EdgehookError
from core.store import open_store
from pipeline.queue import JobRow, JobState, SqliteQueue

_COLUMNS = (
    ("id", 6),
    ("state", 10),
    ("rule", 16),
    ("action", 8),
    ("try", 5),
    ("created", 19),
    ("artifact", 40),
    ("reason", 40),
)


def run_jobs(args: argparse.Namespace, config: Config, env: Mapping[str, str]) -> int:
    conn = open_store(config.store_path)
    queue = SqliteQueue(conn)
    try:
        command = args.jobs_command
        if command == "list":
            return _list(queue, args)
        row = queue.get(args.job_id)
        if row is None:
            raise EdgehookError(f"no job {args.job_id}; see `edgehook jobs list`")
        if command == "show":
            return _show(queue, row, args.json)
        if command == "logs":
            return _logs(config, row, args.attempt)
        now = time.time()
        if command == "cancel":
            state = queue.request_cancel(row.id, now)
            if state == JobState.CANCELLED:
                _operator_audit(config, env, job_id=row.id, transition="cancelled")
                print(f"job {row.id}: cancelled")
            elif state == JobState.RUNNING:
                _operator_audit(config, env, job_id=row.id, transition="cancel_requested")
                print(f"job {row.id}: running; its worker will kill it and record 'cancelled'")
            else:
                raise EdgehookError(
                    f"job {row.id} is {row.state}; only queued or running jobs can be cancelled"
                )
            return 0
        retryable = (JobState.FAILED, JobState.CANCELLED, JobState.SUPERSEDED)
        if row.state not in retryable or queue.retry(row.id, now) != JobState.QUEUED:
            raise EdgehookError(
                f"job {row.id} is {row.state}; only failed, cancelled or "
                "superseded jobs can be retried"
            )
        _operator_audit(config, env, job_id=row.id, transition="retried")
        print(f"job {row.id}: queued again")
        return 0
    finally:
        conn.close()


def _list(queue: SqliteQueue, args: argparse.Namespace) -> int:
    rows = queue.recent(args.state, args.limit)
    if args.json:
        for row in rows:
            print(json.dumps(asdict(row)))
        return 0
    print("  ".join(name.upper().ljust(width) for name, width in _COLUMNS).rstrip())
    for row in rows:
        cells = (
            row.id,
            row.state,
            row.rule,
            row.action,
            f"{row.attempts}/{row.max_attempts}",
            _when(row.created_at),
            row.version_string or "",
            row.reason or row.summary or "",
        )
        print(
            "  ".join(
                str(c)[:w].ljust(w) for c, (_, w) in zip(cells, _COLUMNS, strict=True)
            ).rstrip()
        )
    return 0


def _show(queue: SqliteQueue, row: JobRow, as_json: bool) -> int:
    attempts = queue.attempts(row.id)
    if as_json:
        print(json.dumps({**asdict(row), "attempts": [asdict(a) for a in attempts]}))
        return 0
    for key, value in asdict(row).items():
        if value is not None and value != "":
            shown = _when(value) if key.endswith("_at") or key == "run_after" else value
            print(f"{key:16} {shown}")
    for attempt in attempts:
        ended = _when(attempt.finished_at) if attempt.finished_at else "running"
        print(
            f"attempt {attempt.number}: {attempt.worker}, {_when(attempt.started_at)} -> "
            f"{ended}: {attempt.outcome or '-'} {attempt.reason or ''}".rstrip()
        )
    return 0


def _logs(config: Config, row: JobRow, attempt: int | None) -> int:
    number = attempt or row.attempts
    path = config.jobs_dir / str(row.id) / f"attempt-{number}.log"
    if number < 1 or not path.exists():
        raise EdgehookError(f"job {row.id} has no log for attempt {number}")
    with path.open("rb") as handle:
        sys.stdout.buffer.write(handle.read())
    return 0


def _operator_audit(config: Config, env: Mapping[str, str], **fields: Any) -> None:
    directory = config.audit_dir / "operator"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        audit = AuditLog(directory, load_audit_key(config, env), config.audit, clock=time.time)
        audit.record("operator", user=_user(), **fields)
        audit.close()
    finally:
        os.close(fd)


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _when(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return str(ts)
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
