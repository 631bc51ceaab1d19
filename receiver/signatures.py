"""The X-Wandb-Signature check: HMAC-SHA256 of the raw body, compared in constant time.

W&B documents standard base64 (44 characters). Hex and `sha256=<hex>` are also accepted,
since third-party senders and older guides use them. Every active signing secret is tried
(secrets rotate without dropping deliveries), and all of them are always computed so the
time taken does not tell which secret, if any, matched.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence

_HEX = re.compile(r"(?:sha256=)?([0-9a-fA-F]{64})")
_B64 = re.compile(r"[A-Za-z0-9+/]{43}=")


def parse_signature(header: str | None) -> bytes | None:
    """The 32 digest bytes a header carries, or None when it is absent or malformed."""
    if header is None:
        return None
    value = header.strip()
    if _B64.fullmatch(value):
        # The pattern has checked the alphabet (what b64decode's validate=True checks again).
        return binascii.a2b_base64(value)
    hex_form = _HEX.fullmatch(value)
    if hex_form:
        return bytes.fromhex(hex_form.group(1))
    return None


def sign(body: bytes, secret: bytes) -> str:
    """The header value W&B sends for `body`: base64 of HMAC-SHA256."""
    return base64.b64encode(hmac.new(secret, body, hashlib.sha256).digest()).decode("ascii")


def signature_valid(body: bytes, header: str | None, secrets: Sequence[bytes]) -> bool:
    """True when the header is the HMAC of `body` under any of `secrets`."""
    claimed = parse_signature(header)
    if claimed is None:
        return False
    matched = False
    for secret in secrets:
        expected = hmac.digest(secret, body, "sha256")
        matched |= hmac.compare_digest(expected, claimed)
    return matched
