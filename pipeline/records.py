"""What the queue hands out: a claimed job, and the rows `edgehook jobs` shows; job states."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.store import JobState

__all__ = ["AttemptRow", "Job", "JobRow", "JobState"]


@dataclass(frozen=True)
class Job:
    """A claimed job: what the worker needs to run it."""

    id: int
    rule: str
    action: str
    args: dict[str, Any]
    event: dict[str, Any]
    attempt: int
    max_attempts: int
    created_at: float


@dataclass(frozen=True)
class JobRow:
    """A job as `edgehook jobs` shows it."""

    id: int
    state: str
    rule: str
    action: str
    attempts: int
    max_attempts: int
    created_at: float
    updated_at: float
    finished_at: float | None
    run_after: float
    reason: str | None
    summary: str | None
    version_string: str | None
    superseded_by: int | None
    cancel_requested: bool
    lease_owner: str | None


@dataclass(frozen=True)
class AttemptRow:
    number: int
    worker: str
    started_at: float
    finished_at: float | None
    outcome: str | None
    reason: str | None
    exit_code: int | None
