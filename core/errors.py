"""edgehook's one exception hierarchy, and the exit codes a job child reports failures with.

receiver/answers.py turns these into HTTP answers, pipeline/worker.py to job outcomes, and
edgehook/cli to exit codes. A job child exits 0 on success, EXIT_TRANSIENT (75, sysexits'
EX_TEMPFAIL) when the failure may pass (network, W&B unavailable) and the worker should retry
with backoff, and anything else for a failure retrying cannot fix. Command actions may use
the same convention.
"""

from __future__ import annotations

EXIT_TRANSIENT = 75
EXIT_FAILED = 1


class EdgehookError(Exception):
    """Base class: a failure with a message fit to show a user in one line."""


class ConfigError(EdgehookError):
    """A configuration value is missing or wrong. The message names the key and the fix."""

    def __init__(self, key: str, problem: str, fix: str) -> None:
        self.key = key
        self.problem = problem
        self.fix = fix
        super().__init__(f"config error: {key}: {problem}; fix: {fix}")


class StoreUnavailable(EdgehookError):
    """The store could not commit (locked, read-only, disk full). Nothing was acknowledged."""


class Rejection(EdgehookError):
    """A request fails a check. `status` is the HTTP status, `reason` a stable code for the
    audit log, `detail` a short explanation safe to return to the caller."""

    def __init__(
        self, status: int, reason: str, detail: str, *, retry_after: int | None = None
    ) -> None:
        self.status = status
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after
        super().__init__(f"{status} {reason}: {detail}")


class JobError(EdgehookError):
    """The job cannot succeed as asked (bad artifact, digest mismatch, refused model)."""


class TransientError(JobError):
    """The job may succeed later (network trouble, W&B unavailable): retry with backoff."""


class StalledError(TransientError):
    """Transient, and work is still stuck in threads that would hold the process open at
    exit (the SDK's download pool is joined by an exit handler): the child must leave at
    once rather than wait for them."""
