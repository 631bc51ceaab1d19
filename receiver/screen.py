"""Checks 1-4: what can be decided from a request's head alone, before its body is read.

For POST /webhook, in README's order (checks.py's CHECKS): 1 one Authorization and one
X-Wandb-Signature at most (400); 2 the bearer token: a request that carries the right one
spends no rate budget and goes on to the body and its signature (checks 5-6); 3 any other
spends the client's budget (429 once spent); 4 Content-Type (415), the declared
Content-Length (413), and then the wrong token's refusal (401). Every other path spends
the budget too. So a genuine delivery is never refused for rate, whatever
its address did before: forged traffic from the address W&B's deliveries come from costs
only the forgers. A plain function over the head and the limiter; gate.py turns the
verdict into an answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from core.errors import Rejection
from receiver.auth import bearer_valid
from receiver.bodies import check_declared_length
from receiver.ratelimit import RateLimiter

WEBHOOK_PATHS = ("/webhook", "/webhook/")
_SINGLE = (b"authorization", b"x-wandb-signature")


class Screened(NamedTuple):
    """The head's verdict: a refusal, or on to the body. `proving`: POST /webhook with the
    right token, whose body's signature decides (check 6); `signature` is its header."""

    refusal: Rejection | None
    proving: bool = False
    signature: str | None = None


_PASSED = Screened(None)


def screen(
    method: str,
    path: str,
    headers: Sequence[tuple[bytes, bytes]],
    *,
    client: str,
    now: float,
    limiter: RateLimiter,
    tokens: tuple[bytes, ...],
    max_body_bytes: int,
) -> Screened:
    if path not in WEBHOOK_PATHS or method != "POST":
        limited = _rate(limiter, client, now)
        return _PASSED if limited is None else Screened(limited)
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in _SINGLE and name in found:
            # Two credentials: proxies and frameworks disagree on which one counts.
            return Screened(Rejection(400, "duplicate_header", f"{name.decode()} appears twice"))
        found.setdefault(name, value)
    authorization = found.get(b"authorization")
    token_ok = bearer_valid(
        None if authorization is None else authorization.decode("latin-1"), tokens
    )
    if not token_ok:
        limited = _rate(limiter, client, now)
        if limited is not None:
            return Screened(limited)
    content_type = found.get(b"content-type", b"").split(b";")[0].strip().lower()
    if content_type != b"application/json":
        return Screened(Rejection(415, "bad_content_type", "Content-Type must be application/json"))
    length = found.get(b"content-length")
    try:
        check_declared_length(None if length is None else length.decode("latin-1"), max_body_bytes)
    except Rejection as exc:
        return Screened(exc)
    if not token_ok:
        limiter.auth_failed(client, now)
        return Screened(Rejection(401, "bad_token", "unauthorized"))
    signature = found.get(b"x-wandb-signature")
    return Screened(None, True, None if signature is None else signature.decode("latin-1"))


def _rate(limiter: RateLimiter, client: str, now: float) -> Rejection | None:
    wait = limiter.check(client, now)
    if wait is None:
        return None
    return Rejection(429, "rate_limited", "too many requests", retry_after=int(wait))
