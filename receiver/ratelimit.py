"""Per-client token buckets: one for all requests, a stricter one spent by failed auth.

Memory is bounded: at most `max_clients` buckets, least recently seen evicted first. An
evicted client starts again with a full bucket, so a flood from more addresses than the
table holds gets each address's burst once per eviction cycle; the stricter auth bucket
and the audit log's flood summaries still bound what that costs.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict

from core.config import RateLimits


class RateLimiter:
    """Verdicts only; the HTTP layer turns a denial into 429 + Retry-After."""

    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits
        self._fail_rate = limits.auth_failures_per_minute / 60.0
        # client key -> [request tokens, auth-failure tokens, time of last refill]
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, client: str, now: float) -> float | None:
        """Spend one request token. None when allowed, else seconds until the next is due."""
        bucket = self._bucket(client_key(client), now)
        if bucket[1] < 1.0:
            return _wait(1.0 - bucket[1], self._fail_rate)
        if bucket[0] < 1.0:
            return _wait(1.0 - bucket[0], self.limits.requests_per_second)
        bucket[0] -= 1.0
        return None

    def auth_failed(self, client: str, now: float) -> None:
        """Spend one of the client's (few) auth-failure tokens."""
        bucket = self._bucket(client_key(client), now)
        bucket[1] = max(0.0, bucket[1] - 1.0)

    def _bucket(self, key: str, now: float) -> list[float]:
        bucket = self._buckets.get(key)
        limits = self.limits
        if bucket is None:
            if len(self._buckets) >= limits.max_clients:
                self._buckets.popitem(last=False)
            bucket = [float(limits.burst), float(limits.auth_failure_burst), now]
            self._buckets[key] = bucket
            return bucket
        self._buckets.move_to_end(key)
        # A clock that stepped backwards refills nothing rather than going negative.
        elapsed = max(0.0, now - bucket[2])
        bucket[0] = min(float(limits.burst), bucket[0] + elapsed * limits.requests_per_second)
        bucket[1] = min(float(limits.auth_failure_burst), bucket[1] + elapsed * self._fail_rate)
        bucket[2] = now
        return bucket


def client_key(client: str) -> str:
    """IPv6 clients are keyed by /64: one subscriber usually holds a whole /64."""
    if ":" not in client:
        return client
    try:
        network = ipaddress.IPv6Network(f"{client}/64", strict=False)
    except ValueError:
        return client
    return str(network)


def _wait(deficit: float, rate: float) -> float:
    if rate <= 0:
        return 3600.0
    return max(1.0, math.ceil(deficit / rate))
