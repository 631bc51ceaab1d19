"""The pipeline's exception vocabulary, and the exit codes a job child reports them with.

A job child exits 0 on success, EXIT_TRANSIENT (75, sysexits' EX_TEMPFAIL) when the failure
may pass (network, W&B unavailable) and the worker should retry with backoff, and anything
else for a failure retrying cannot fix. Command actions may use the same convention.
"""

from __future__ import annotations

EXIT_TRANSIENT = 75
EXIT_FAILED = 1


class JobError(Exception):
    """The job cannot succeed as asked (bad artifact, digest mismatch, refused model)."""


class TransientError(JobError):
    """The job may succeed later (network trouble, W&B unavailable): retry with backoff."""


class StalledError(TransientError):
    """Transient, and work is still stuck in threads that would hold the process open at
    exit (the SDK's download pool is joined by an exit handler): the child must leave at
    once rather than wait for them."""
