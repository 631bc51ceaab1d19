"""The receiver's components, made once at start-up (server.py) and shared by its layers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from receiver.audit import AuditLog
from receiver.clients import ClientResolver
from receiver.committer import Committer
from receiver.config import Config
from receiver.credentials import Secrets
from receiver.ratelimit import RateLimiter


@dataclass
class Services:
    config: Config
    secrets: Secrets
    limiter: RateLimiter
    resolver: ClientResolver
    audit: AuditLog
    committer: Committer
    clock: Callable[[], float]  # wall time: received_at, the duplicate window, audit stamps
    monotonic: Callable[[], float]  # intervals: rate limits, latency
