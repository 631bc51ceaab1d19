"""uvicorn's httptools protocol with bounds on the request head and on connections.

uvicorn applies `h11_max_incomplete_event_size` only to its h11 protocol and has no timeout
for reading a request's head, so with httptools a client could send megabytes of headers,
or trickle them forever. This subclass caps the bytes of request line plus headers (431)
and the time to receive them (408).

Capacity: uvicorn's `limit_concurrency` counts idle connections, so a few hundred idle
sockets answer every genuine delivery 503. Here connections are capped instead
(`max_connections`, file descriptors raised to match in server.py), and when the table is
full a new connection takes the place of the oldest one that is *waiting for a head*
(never sent a request first, then idle keep-alive ones): idle and slow-head connections
cannot hold capacity against a delivery, which sends its head at once and stops being
evictable. Only when every connection is busy with a request is a new one refused (503).
Every refusal made here is reported to `on_refused`, so the audit log accounts for it.

"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Callable
from typing import Any, Protocol

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
    b"connection: close\r\n\r\n"
)
_HEAD_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_OVER_CAPACITY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: 1\r\n"
    b"connection: close\r\n\r\n"
)
# (peer address, status, reason): one call per refused connection or request.
OnRefused = Callable[[str, int, str], None]
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Pending(Protocol):
    """A request whose body the protocol reads and has judged before any app sees it."""

    max_bytes: int
    timeout_s: float

    def complete(self, body: bytes, close: bool) -> bytes | None:
        """The whole answer refusing it, or None to hand it to the app, body and all."""

    def too_large(self) -> bytes:
        """The answer when the body passes `max_bytes` (the connection is closed)."""

    def timed_out(self) -> bytes:
        """The answer when the body took longer than `timeout_s` (the connection is closed)."""

    def left(self) -> None:
        """The client closed the connection before the body ended."""


# (method, path, headers, peer, scope, close) -> the whole answer for a refused request
# (saying `connection: close` when `close`), a Pending whose body decides, or None to hand
# the request to the app (the hook may leave its verdict in the scope).
Early = Callable[
    [str, str, list[tuple[bytes, bytes]], str, dict[str, Any], bool], "bytes | Pending | None"
]


class Capacity:
    """The connections of one server that wait for a request head, oldest first.

    `fresh` never sent a request (idle sockets, slow heads: evicted first); `kept` are
    keep-alive connections between requests (a tunnel's pool: evicted only after those)."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.live = 0
        self.fresh: dict[Any, None] = {}
        self.kept: dict[Any, None] = {}

    def victim(self) -> Any | None:
        for waiting in (self.fresh, self.kept):
            if waiting:
                return next(iter(waiting))
        return None

    def waiting(self, conn: Any, fresh: bool) -> None:
        (self.fresh if fresh else self.kept)[conn] = None

    def busy(self, conn: Any) -> None:
        self.fresh.pop(conn, None)
        self.kept.pop(conn, None)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """The protocol; `bounded_protocol` makes a subclass holding one server's bounds."""

    capacity: Capacity
    max_head_bytes: int
    head_timeout_s: float
    report: OnRefused
    early: Early | None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._counted = False
        self._in_head = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._answered = False  # the fast path answered this request; its body is dropped
        self._pending: Pending | None = None  # the fast path reads this request's body
        self._body = bytearray()
        self._body_timer: asyncio.TimerHandle | None = None
        if self.capacity.live >= self.capacity.max_connections:
            victim = self.capacity.victim()
            if victim is None:
                self._refuse(_OVER_CAPACITY, 503, "over_capacity")
                return
            victim._refuse(_HEAD_TIMEOUT, 408, "idle_evicted")
        self.capacity.live += 1
        self._counted = True
        self._start_head(fresh=True)

    def on_headers_complete(self) -> None:
        if self.transport.is_closing():
            return  # refused already: the rest of what was read with it is dropped
        self._end_head()
        # The reads counted so far hold the head and maybe some body: measure the head
        # exactly only when those reads could have held an oversized one.
        if self._head_bytes > self.max_head_bytes and self._head_size() > self.max_head_bytes:
            self._refuse(_HEAD_TOO_LARGE, 431, "head_too_large")
            return
        if self.early is not None and self._answer_early():
            return
        super().on_headers_complete()

    def _answer_early(self) -> bool:
        """The flood path: checks 1-4 on the head, and a refusal written here, without an
        ASGI task, a scope's cycle or Starlette (about twice the refusals a core answers);
        or, for a request the hook wants to judge by its body, that body read here first
        (`Pending`). Only when no earlier request on this connection is still being
        answered, so answers stay in order; an upgrade request goes the usual way."""
        if (self.cycle is not None and not self.cycle.response_complete) or (
            self.parser.should_upgrade()
        ):
            return False
        path = httptools.parse_url(self.url).path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        method = self.parser.get_method().decode("ascii")
        self.scope["method"], self.scope["path"] = method, path
        close = not self.parser.should_keep_alive() or any(
            name == b"expect" for name, _ in self.headers
        )
        early: Any = self.early
        answer = early(method, path, self.headers, self._peer(), self.scope, close)
        if answer is None:
            return False
        if not isinstance(answer, bytes):
            self._await_body(answer)
            return True
        self._answered = True
        self.transport.write(answer)
        if close:
            # A client waiting for 100-continue would never send the body it announced.
            self._answered = False
            self.transport.close()
        else:
            # As after any answer: waiting for the next head, evictable, timed (the rest of
            # this body is dropped as it comes).
            self._start_head(fresh=False)
        return True

    def _await_body(self, pending: Pending) -> None:
        self._pending = pending
        self._body = bytearray()
        if self.expect_100_continue:
            # Asked for here, so the app, if it gets the request, does not ask again.
            self.expect_100_continue = False
            self.transport.write(_CONTINUE)
        self._body_timer = asyncio.get_running_loop().call_later(
            pending.timeout_s, self._body_timed_out
        )

    def on_body(self, body: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._pending is not None:
            self._body += body
            if len(self._body) > self._pending.max_bytes:
                self._close_with(self._take_pending().too_large())
            return
        if not self._answered:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self.transport.is_closing():
            return
        if self._pending is not None:
            self._judge_body()
            return
        if not self._answered:
            super().on_message_complete()
            return
        self._answered = False  # the refused request's body is read and dropped: next one

    def _judge_body(self) -> None:
        """The whole body is in: refused here, or handed to the app as if just parsed."""
        pending, body = self._take_pending(), bytes(self._body)
        self._body = bytearray()
        close = not self.parser.should_keep_alive()
        answer = pending.complete(body, close)
        if answer is None:
            # Still inside the parser's callback, so its state is this request's.
            super().on_headers_complete()
            if body:
                super().on_body(body)
            super().on_message_complete()
            return
        if close:
            self._close_with(answer)
            return
        self.transport.write(answer)
        self._start_head(fresh=False)

    def _take_pending(self) -> Pending:
        pending = self._pending
        assert pending is not None
        self._pending = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        return pending

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self._pending is not None and not self.transport.is_closing():
            self._close_with(self._take_pending().timed_out())

    def _close_with(self, answer: bytes) -> None:
        self.transport.write(answer)
        self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._start_head(fresh=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_head()
        if self._pending is not None:
            self._take_pending().left()
        if self._counted:
            self._counted = False
            self.capacity.live -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused already: the rest of what it sent is not parsed
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_head_bytes:
            self._refuse(_HEAD_TOO_LARGE, 431, "head_too_large")

    def send_400_response(self, msg: str) -> None:
        # httptools could not parse the request: refused before the app sees it.
        self._end_head()
        if not self.transport.is_closing():
            self.report(self._peer(), 400, "bad_request")
        super().send_400_response(msg)

    def _head_size(self) -> int:
        return len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)

    def _start_head(self, *, fresh: bool) -> None:
        self._in_head = True
        self._head_bytes = 0
        self.capacity.waiting(self, fresh)
        self._head_timer = asyncio.get_running_loop().call_later(
            self.head_timeout_s, self._head_timed_out
        )

    def _end_head(self) -> None:
        self._in_head = False
        self.capacity.busy(self)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        if self._in_head:
            self._refuse(_HEAD_TIMEOUT, 408, "head_timeout")

    def _peer(self) -> str:
        return str(self.client[0]) if self.client else "unknown"

    def _refuse(self, response: bytes, status: int, reason: str) -> None:
        self._end_head()
        if self._counted:  # its place is free now, not when the close completes
            self._counted = False
            self.capacity.live -= 1
        if not self.transport.is_closing():
            self.report(self._peer(), status, reason)
            self.transport.write(response)
            self.transport.close()


def bounded_protocol(
    max_head_bytes: int,
    head_timeout_s: float,
    *,
    max_connections: int = 1 << 20,
    on_refused: OnRefused | None = None,
    early: Early | None = None,
) -> type[HttpToolsProtocol]:
    """The protocol class uvicorn is given (`http=`): one per server, sharing its table."""
    report: OnRefused = on_refused or (lambda _peer, _status, _reason: None)
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {
            "capacity": Capacity(max_connections),
            "max_head_bytes": max_head_bytes,
            "head_timeout_s": head_timeout_s,
            "report": staticmethod(report),
            "early": None if early is None else staticmethod(early),
        },
    )
