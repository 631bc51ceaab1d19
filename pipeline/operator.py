"""Operator actions: retry or cancel a job, make a registered model active. One implementation
for `edgehook jobs`, `edgehook model` and the console; each change is audited in the operator
chain (audit/operator/) with who did it, through what, and from where.

No torch here: the console imports this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import audit
from core.config import Config
from core.errors import EdgehookError, JobError
from pipeline.models import registry
from pipeline.models.trust import SigningPolicy
from pipeline.queue import JobRow, JobState, SqliteQueue

RETRYABLE = (JobState.FAILED, JobState.CANCELLED, JobState.SUPERSEDED)
# A registered model's directory name (registry names: job12-attempt1, installed-<digest>).
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ActionRefused(EdgehookError):
    """The action cannot be done as asked; `status` is the HTTP status the console answers."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class Operator:
    """Who acts: the Unix user for a command, `console` for the console's token holder;
    `via` is the tool (cli, console); `origin` where the request came from (an address)."""

    user: str
    via: str
    origin: str | None = None


def record(config: Config, key: bytes, who: Operator, **fields: Any) -> None:
    """A line in the operator chain."""
    origin = {} if who.origin is None else {"origin": who.origin}
    audit.append(
        config.audit_dir / "operator",
        key,
        config.audit,
        "operator",
        user=who.user,
        via=who.via,
        **origin,
        **fields,
    )


def retry(
    queue: SqliteQueue, config: Config, key: bytes, who: Operator, job_id: int, now: float
) -> str:
    """Queue a failed, cancelled or superseded job again; returns what happened."""
    row = _existing(queue, job_id)
    if row.state not in RETRYABLE or queue.retry(job_id, now) != JobState.QUEUED:
        raise ActionRefused(
            409,
            f"job {job_id} is {row.state}; only failed, cancelled or superseded jobs can be "
            "retried",
        )
    record(config, key, who, job_id=job_id, transition="retried")
    return f"job {job_id}: queued again"


def retry_failed(
    queue: SqliteQueue, config: Config, key: bytes, who: Operator, now: float, limit: int
) -> list[int]:
    """Queue again the newest `limit` failed jobs (each audited); returns their ids."""
    done = []
    for row in queue.recent(JobState.FAILED.value, limit):
        if queue.retry(row.id, now) == JobState.QUEUED:
            record(config, key, who, job_id=row.id, transition="retried", bulk=True)
            done.append(row.id)
    return done


def cancel(
    queue: SqliteQueue, config: Config, key: bytes, who: Operator, job_id: int, now: float
) -> str:
    """Cancel a queued job at once, or ask a running job's worker to kill it."""
    row = _existing(queue, job_id)
    state = queue.request_cancel(job_id, now)
    if state == JobState.CANCELLED:
        record(config, key, who, job_id=job_id, transition="cancelled")
        return f"job {job_id}: cancelled"
    if state == JobState.RUNNING:
        record(config, key, who, job_id=job_id, transition="cancel_requested")
        return f"job {job_id}: running; its worker will kill it and record 'cancelled'"
    raise ActionRefused(
        409, f"job {job_id} is {row.state}; only queued or running jobs can be cancelled"
    )


def rollback(config: Config, key: bytes, who: Operator) -> str:
    """The previous model becomes active again; returns its name."""
    name = registry.rollback(config.models_dir)
    record(config, key, who, action="model_rollback", model=name)
    return name


def activate(config: Config, key: bytes, who: Operator, name: str) -> str:
    """Make a registered model active again (a rollback to any earlier model), after
    checking its signature as deploy does; the predictor follows the registry."""
    path = registered(config.models_dir, name)
    current = registry.state(config.models_dir)
    if current["active"] == name:
        raise ActionRefused(409, f"model {name} is already active")
    try:
        signer = SigningPolicy.from_config(config).accept(path)
    except JobError as exc:
        raise ActionRefused(409, f"model {name} is not verified: {exc}") from exc
    decision = registry.install(config.models_dir, path, name, activate=True)
    record(
        config,
        key,
        who,
        action="model_activate",
        model=name,
        previous=current["active"],
        signer=signer,
    )
    return f"{decision.reason}: {name}"


def registered(models_dir: Path, name: str) -> Path:
    """The directory of a registered model, refusing anything that is not one (a path)."""
    if not MODEL_NAME.fullmatch(name) or name in (".", ".."):
        raise ActionRefused(404, f"no model named {name!r}")
    path = models_dir / name
    if not (path / "model.json").is_file():
        raise ActionRefused(404, f"no model named {name!r}")
    return path


def names(models_dir: Path) -> Iterable[str]:
    """Every registered model, oldest first by modification time."""
    if not models_dir.is_dir():
        return []
    found = [p for p in models_dir.iterdir() if (p / "model.json").is_file()]
    return [p.name for p in sorted(found, key=lambda p: (p.stat().st_mtime, p.name))]


def _existing(queue: SqliteQueue, job_id: int) -> JobRow:
    row = queue.get(job_id)
    if row is None:
        raise ActionRefused(404, f"no job {job_id}")
    return row
