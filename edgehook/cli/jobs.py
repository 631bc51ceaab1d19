"""`edgehook worker` and `edgehook jobs list|show|logs|cancel|retry`: running and operating
the queue from the shell.

Operator actions are audited in their own chain (audit/operator/), written under a lock so
two commands at once cannot interleave it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from core.config import Config
from core.credentials import load_audit_key
from core.errors import EdgehookError
from core.store import open_store
from edgehook.cli.common import (
    Subparsers,
    add_command,
    config,
    shell_operator,
    whole,
)
from pipeline import operator
from pipeline.queue import JobRow, SqliteQueue
from pipeline.worker import run_worker as work

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


def register(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "worker",
        "run queued jobs, each in an isolated child process",
        "edgehook worker",
        "edgehook worker --once   # drain what is runnable, then exit",
    )
    p.add_argument("--once", action="store_true", help="exit when nothing is runnable")
    p.set_defaults(func=run_worker)

    jobs = add_command(
        sub,
        "jobs",
        "list, inspect, cancel and retry jobs",
        "edgehook jobs list",
        "edgehook jobs list --state failed --json",
        "edgehook jobs show 12",
        "edgehook jobs logs 12",
        "edgehook jobs cancel 12",
        "edgehook jobs retry 12",
    )
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    j = add_command(
        jobs_sub, "list", "recent jobs, newest first", "edgehook jobs list --state running"
    )
    j.add_argument(
        "--state", choices=["queued", "running", "succeeded", "failed", "cancelled", "superseded"]
    )
    j.add_argument("--limit", type=int, default=50)
    j.add_argument("--json", action="store_true")
    j.set_defaults(func=_with_queue(_list))
    for name, text, action in (
        ("show", "one job and its attempts", _show),
        ("logs", "a job's output", _logs),
        ("cancel", "cancel a queued job, or kill a running one", _by_hand(operator.cancel)),
        ("retry", "queue a failed, cancelled or superseded job again", _by_hand(operator.retry)),
    ):
        j = add_command(jobs_sub, name, text, f"edgehook jobs {name} 12")
        j.add_argument("job_id", type=whole(1, 2**63 - 1))
        if name == "show":
            j.add_argument("--json", action="store_true")
        if name == "logs":
            j.add_argument("--attempt", type=whole(1, 2**31), help="default: the latest")
        j.set_defaults(func=_with_queue(_one_job(action)))


def run_worker(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    return work(config(args, env), env, once=args.once)


# What `edgehook jobs ACTION` runs: the queue, the config, the arguments and the environment.
_Action = Callable[[SqliteQueue, Config, argparse.Namespace, Mapping[str, str]], int]


def _with_queue(action: _Action) -> Callable[[argparse.Namespace, Mapping[str, str]], int]:
    def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
        loaded = config(args, env)
        conn = open_store(loaded.store_target)
        try:
            return action(SqliteQueue(conn), loaded, args, env)
        finally:
            conn.close()

    return run


_RowAction = Callable[[SqliteQueue, Config, JobRow, argparse.Namespace, Mapping[str, str]], int]


def _one_job(action: _RowAction) -> _Action:
    def run(
        queue: SqliteQueue, loaded: Config, args: argparse.Namespace, env: Mapping[str, str]
    ) -> int:
        row = queue.get(args.job_id)
        if row is None:
            raise EdgehookError(f"no job {args.job_id}; see `edgehook jobs list`")
        return action(queue, loaded, row, args, env)

    return run


# operator.cancel and operator.retry: a change to one job, audited in the operator chain.
_Change = Callable[[SqliteQueue, Config, bytes, operator.Operator, int, float], str]


def _by_hand(change: _Change) -> _RowAction:
    def run(
        queue: SqliteQueue,
        loaded: Config,
        row: JobRow,
        _args: argparse.Namespace,
        env: Mapping[str, str],
    ) -> int:
        key = load_audit_key(loaded, env)
        print(change(queue, loaded, key, shell_operator(), row.id, time.time()))
        return 0

    return run


def _list(
    queue: SqliteQueue, _config: Config, args: argparse.Namespace, _env: Mapping[str, str]
) -> int:
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


def _show(
    queue: SqliteQueue,
    _config: Config,
    row: JobRow,
    args: argparse.Namespace,
    _env: Mapping[str, str],
) -> int:
    attempts = queue.attempts(row.id)
    if args.json:
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


def _logs(
    _queue: SqliteQueue,
    loaded: Config,
    row: JobRow,
    args: argparse.Namespace,
    _env: Mapping[str, str],
) -> int:
    number = args.attempt or row.attempts
    path = loaded.jobs_dir / str(row.id) / f"attempt-{number}.log"
    if number < 1 or not path.exists():
        raise EdgehookError(f"job {row.id} has no log for attempt {number}")
    with path.open("rb") as handle:
        sys.stdout.buffer.write(handle.read())
    return 0


def _when(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return str(ts)
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
