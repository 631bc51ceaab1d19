"""Reading a request body with a hard cap enforced while reading.

The declared Content-Length is checked first (cheap refusal), then the bytes actually
received are counted, so a lying Content-Length or a chunked body cannot get past the cap.
The refusals are the same wherever the body is read: by the protocol's fast path
(fastpath.py) or by the app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from core.errors import Rejection

BODY_TIMEOUT = Rejection(408, "body_timeout", "body not received in time")
# Nobody is left to answer; the audit line records it (499, as nginx counts it).
CLIENT_LEFT = Rejection(499, "client_disconnected", "client left mid-body")


def too_large(limit: int) -> Rejection:
    return Rejection(413, "too_large", f"body is larger than {limit} bytes")


def check_declared_length(header: str | None, limit: int) -> None:
    if header is None:
        return
    if not header.isdigit():
        raise Rejection(400, "bad_length", "Content-Length is not a number")
    if int(header) > limit:
        raise too_large(limit)


async def read_capped(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    return bytes(body)
