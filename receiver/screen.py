"""Checks 1-4: what can be decided from a request's head alone, before its body is read.

1 rate limit per client (429), then for POST /webhook: 2 Content-Type (415), 3 declared
Content-Length (413), 4 bearer token (401). A plain function over the head and the limiter;
the HTTP layer (gate.py) turns the verdict into an answer.
"""

from __future__ import annotations

from collections.abc import Mapping

from receiver.auth import bearer_valid
from receiver.bodies import check_declared_length
from receiver.errors import Rejection
from receiver.ratelimit import RateLimiter

WEBHOOK_PATH = "/webhook"


def screen(
    method: str,
    path: str,
    headers: Mapping[bytes, bytes],
    *,
    client: str,
    now: float,
    limiter: RateLimiter,
    tokens: tuple[bytes, ...],
    max_body_bytes: int,
) -> Rejection | None:
    """None when the request may go on to the app; otherwise the refusal."""
    wait = limiter.check(client, now)
    if wait is not None:
        return Rejection(429, "rate_limited", "too many requests", retry_after=int(wait))
    if path != WEBHOOK_PATH or method != "POST":
        return None
    content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if content_type != b"application/json":
        return Rejection(415, "bad_content_type", "Content-Type must be application/json")
    length = headers.get(b"content-length")
    try:
        check_declared_length(None if length is None else length.decode("latin-1"), max_body_bytes)
    except Rejection as exc:
        return exc
    authorization = headers.get(b"authorization")
    if not bearer_valid(None if authorization is None else authorization.decode("latin-1"), tokens):
        limiter.auth_failed(client, now)
        return Rejection(401, "bad_token", "unauthorized")
    return None
