"""How verdicts become HTTP answers: the one place that decides bodies and headers.

A refusal's bytes depend only on the refusal, so they are built once per distinct refusal:
under a flood, answering is the hot path.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from starlette.responses import Response
from starlette.types import Send

from receiver.auth import WWW_AUTHENTICATE
from receiver.errors import Rejection

Headers = tuple[tuple[bytes, bytes], ...]
_JSON: Headers = ((b"content-type", b"application/json"),)


@functools.lru_cache(maxsize=512)
def _refusal_bytes(
    status: int, reason: str, detail: str, retry_after: int | None
) -> tuple[bytes, Headers]:
    if status == 401:
        # Identical whatever failed: a bad token and a bad signature must not be told apart.
        body = b'{"error":"unauthorized"}'
        extra: Headers = ((b"www-authenticate", WWW_AUTHENTICATE.encode("ascii")),)
    else:
        body = json.dumps({"error": reason, "detail": detail}, separators=(",", ":")).encode()
        extra = ()
    if retry_after is not None:
        extra += ((b"retry-after", str(retry_after).encode("ascii")),)
    return body, (*_JSON, *extra, (b"content-length", str(len(body)).encode("ascii")))


def refusal_bytes(exc: Rejection) -> tuple[bytes, Headers]:
    return _refusal_bytes(exc.status, exc.reason, exc.detail, exc.retry_after)


async def send_refusal(
    send: Send,
    record: dict[str, Any],
    exc: Rejection,
    decision: str = "rejected",
    extra: Headers = (),
) -> None:
    """Answer with raw ASGI messages (no Response object on the flood path)."""
    body, headers = refusal_bytes(exc)
    record.update(decision=decision, reason=exc.reason)
    start = {"type": "http.response.start", "status": exc.status, "headers": [*headers, *extra]}
    await send(start)
    await send({"type": "http.response.body", "body": body})


def refusal(record: dict[str, Any], exc: Rejection, decision: str = "rejected") -> Response:
    body, headers = refusal_bytes(exc)
    record.update(decision=decision, reason=exc.reason)
    response = Response(body, status_code=exc.status)
    response.raw_headers = list(headers)
    return response


def answer(
    record: dict[str, Any],
    status: int,
    decision: str,
    reason: str,
    body: dict[str, Any],
    *,
    retry_after: int | None = None,
) -> Response:
    record.update(decision=decision, reason=reason)
    response = Response(
        json.dumps(body, separators=(",", ":")), status_code=status, media_type="application/json"
    )
    response.headers["cache-control"] = "no-store"
    if retry_after is not None:
        response.headers["retry-after"] = str(retry_after)
    return response
