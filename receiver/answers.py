"""How verdicts become HTTP answers: the one place that decides bodies and headers.

Formatting only: what a request's audit line records is decided on its record
(record.py's `decide`/`refuse`) by the caller, never here.

A refusal's text can carry what a caller chose (an arg's name, bounded to 64 characters),
so nothing keyed on it may grow with every caller. The flood path's answers (checks 1-6:
a short, fixed list, 429 varying only in its Retry-After) are kept in a bounded LRU; the
401, their commonest, is a constant.
"""

from __future__ import annotations

import functools
import json
from http import HTTPStatus
from typing import Any

from starlette.responses import Response
from starlette.types import Send

from core.errors import Rejection
from receiver.auth import WWW_AUTHENTICATE

Headers = tuple[tuple[bytes, bytes], ...]
_JSON: Headers = ((b"content-type", b"application/json"),)


# Identical whatever failed: a bad token and a bad signature must not be told apart.
_UNAUTHORIZED = b'{"error":"unauthorized"}'
_UNAUTHORIZED_HEADERS: Headers = (
    *_JSON,
    (b"www-authenticate", WWW_AUTHENTICATE.encode("ascii")),
    (b"content-length", str(len(_UNAUTHORIZED)).encode("ascii")),
)


def refusal_bytes(exc: Rejection) -> tuple[bytes, Headers]:
    if exc.status == 401:
        return _UNAUTHORIZED, _UNAUTHORIZED_HEADERS
    body = json.dumps({"error": exc.reason, "detail": exc.detail}, separators=(",", ":")).encode()
    extra: Headers = ()
    if exc.retry_after is not None:
        extra = ((b"retry-after", str(exc.retry_after).encode("ascii")),)
    return body, (*_JSON, *extra, (b"content-length", str(len(body)).encode("ascii")))


def raw_refusal(exc: Rejection, request_id: str, *, close: bool) -> bytes:
    """The whole HTTP/1.1 answer for a refusal, as the protocol's fast path writes it: the
    same status, headers and body as `send_refusal`, plus the request id."""
    head, body = _raw_parts(exc.status, exc.reason, exc.detail, exc.retry_after)
    end = b"\r\nconnection: close\r\n\r\n" if close else b"\r\n\r\n"
    return b"".join((head, request_id.encode("ascii"), end, body))


@functools.lru_cache(maxsize=256)
def _raw_parts(
    status: int, reason: str, detail: str, retry_after: int | None
) -> tuple[bytes, bytes]:
    """(status line and headers up to the request id's value, body) of a fast-path refusal."""
    body, headers = refusal_bytes(Rejection(status, reason, detail, retry_after=retry_after))
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode("ascii")]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\nx-request-id: ", body


async def send_refusal(send: Send, exc: Rejection, extra: Headers = ()) -> None:
    """Answer with raw ASGI messages (no Response object on the flood path)."""
    body, headers = refusal_bytes(exc)
    start = {"type": "http.response.start", "status": exc.status, "headers": [*headers, *extra]}
    await send(start)
    await send({"type": "http.response.body", "body": body})


def refusal(exc: Rejection) -> Response:
    body, headers = refusal_bytes(exc)
    response = Response(body, status_code=exc.status)
    response.raw_headers = list(headers)
    return response


def answer(status: int, body: dict[str, Any], *, retry_after: int | None = None) -> Response:
    response = Response(
        json.dumps(body, separators=(",", ":")), status_code=status, media_type="application/json"
    )
    response.headers["cache-control"] = "no-store"
    if retry_after is not None:
        response.headers["retry-after"] = str(retry_after)
    return response
