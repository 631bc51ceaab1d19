"""uvicorn's httptools protocol with bounds on the request head.

uvicorn applies `h11_max_incomplete_event_size` only to its h11 protocol and has no timeout
for reading a request's head, so with httptools a client could send megabytes of headers,
or trickle them forever and hold a connection slot (slowloris). This subclass caps the
bytes of request line plus headers (431) and the time to receive them (408).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
    b"connection: close\r\n\r\n"
)
_HEAD_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class _HeadRefused(Exception):
    """Raised from a parser callback to stop parsing a refused request."""


def bounded_protocol(max_head_bytes: int, head_timeout_s: float) -> type[HttpToolsProtocol]:
    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._start_head()

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_timer.cancel()
            # The reads counted so far hold the head and maybe some body: measure the head
            # exactly only when those reads could have held an oversized one.
            if self._head_bytes > max_head_bytes and self._head_size() > max_head_bytes:
                self._refuse(_HEAD_TOO_LARGE)
                raise _HeadRefused
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._start_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_timer.cancel()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                self._head_bytes += len(data)
            try:
                super().data_received(data)
            except _HeadRefused:
                return
            if self._in_head and self._head_bytes > max_head_bytes:
                self._refuse(_HEAD_TOO_LARGE)

        def _head_size(self) -> int:
            return len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)

        def _start_head(self) -> None:
            self._in_head = True
            self._head_bytes = 0
            self._head_timer = asyncio.get_running_loop().call_later(
                head_timeout_s, self._head_timed_out
            )

        def _head_timed_out(self) -> None:
            if self._in_head:
                self._refuse(_HEAD_TIMEOUT)

        def _refuse(self, response: bytes) -> None:
            self._in_head = False
            self._head_timer.cancel()
            if not self.transport.is_closing():
                self.transport.write(response)
                self.transport.close()

    return BoundedHttpToolsProtocol
