"""Who may use the console: the one permission question, sessions, CSRF and login limits.

The API and /metrics take the console token as `Authorization: Bearer`; the pages take a
session cookie that a login with the same token sets. Sessions live in this process's memory
(a restart logs everyone out) and each carries its own CSRF token, which every form posts
back. Wrong-token logins spend a token bucket per address and one for everyone, so the
token cannot be guessed at speed from one address or many.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass

SESSION_COOKIE = "edgehook_console"
MAX_SESSIONS = 1000  # the oldest are forgotten first: a login loop cannot grow memory
_TRACKED_ADDRESSES = 1000


@dataclass(frozen=True)
class Session:
    id: str
    csrf: str
    expires: float
    origin: str


class Sessions:
    def __init__(self, lifetime_s: float) -> None:
        self.lifetime_s = lifetime_s
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def create(self, origin: str, now: float) -> Session:
        session = Session(
            secrets.token_urlsafe(32), secrets.token_urlsafe(32), now + self.lifetime_s, origin
        )
        self._by_id[session.id] = session
        while len(self._by_id) > MAX_SESSIONS:
            self._by_id.popitem(last=False)
        return session

    def get(self, session_id: str | None, now: float) -> Session | None:
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None or session.expires <= now:
            self._by_id.pop(session_id, None)
            return None
        return session

    def end(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)


def token_matches(token: bytes, offered: str | None) -> bool:
    """Constant-time comparison of an offered token with the console's."""
    if not offered:
        return False
    return hmac.compare_digest(token, offered.strip().encode("utf-8", "replace"))


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def csrf_matches(session: Session, offered: str | None) -> bool:
    return bool(offered) and hmac.compare_digest(session.csrf, str(offered))


class LoginLimiter:
    """Token buckets of wrong-login attempts: one per address, one for all addresses."""

    def __init__(self, per_minute: float, burst: int = 5) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, name: str, now: float, burst: float) -> float:
        tokens, at = self._buckets.get(name, (burst, now))
        return min(burst, tokens + max(0.0, now - at) * self.rate)

    def retry_after(self, address: str, now: float) -> int | None:
        """Seconds until this address may try again, or None when it may try now."""
        worst = 0.0
        for name, burst in ((address, self.burst), ("*", self.burst * 4)):
            level = self._level(name, now, burst)
            if level < 1.0:
                worst = max(worst, (1.0 - level) / self.rate)
        return None if worst == 0.0 else max(1, int(worst + 0.999))

    def failed(self, address: str, now: float) -> None:
        for name, burst in ((address, self.burst), ("*", self.burst * 4)):
            self._buckets[name] = (self._level(name, now, burst) - 1.0, now)
            self._buckets.move_to_end(name)
        while len(self._buckets) > _TRACKED_ADDRESSES:
            self._buckets.popitem(last=False)
