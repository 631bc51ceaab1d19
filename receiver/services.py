"""The receiver's components, made once at start-up (server.py) and shared by its layers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core.audit import AuditLog
from core.config import Config
from core.credentials import Secrets
from receiver.clients import ClientResolver
from receiver.committer import Committer
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
