"""The bearer access-token check.

W&B sends `Authorization: Bearer <Access token secret>`. Whether W&B adds the scheme or
passes a stored `Bearer ...` through verbatim is not documented, so the credential is
compared after the scheme either way.
"""

from __future__ import annotations

import hmac

WWW_AUTHENTICATE = 'Bearer realm="edgehook"'


def bearer_valid(header: str | None, tokens: tuple[bytes, ...]) -> bool:
    """True when the Authorization header carries one of `tokens` (several during a rotation).

    Every token is compared, in constant time, whichever matches: the timing says nothing
    about which one, or how much of it, matched."""
    if header is None:
        return False
    scheme, _, credential = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    candidate = credential.strip().encode("utf-8", "surrogateescape")
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(candidate, token)
    return matched
