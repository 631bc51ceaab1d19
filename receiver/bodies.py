"""Reading a request body with a hard cap enforced while reading.

The declared Content-Length is checked first (cheap refusal), then the bytes actually
received are counted, so a lying Content-Length or a chunked body cannot get past the cap.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from core.errors import Rejection


def check_declared_length(header: str | None, limit: int) -> None:
    if header is None:
        return
    if not header.isdigit():
        raise Rejection(400, "bad_length", "Content-Length is not a number")
    if int(header) > limit:
        raise Rejection(413, "too_large", f"body is larger than {limit} bytes")


async def read_capped(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise Rejection(413, "too_large", f"body is larger than {limit} bytes")
    return bytes(body)
