"""The receiver's exception vocabulary; app.py maps these to HTTP answers, cli.py to exit codes."""

from __future__ import annotations


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
