"""The protocol's fast path (protocol.py): checks 1-6 decided without an ASGI task.

From the head, checks 1-4 (screen.py) refuse a stranger. A request carrying the right token
is not refused on its head: the protocol reads its body (capped, timed) and check 6, the
signature, decides here too, so forgeries carrying a leaked token are refused as cheaply
as a stranger's. Only a request that proved itself (or one the fast path cannot take: a
pipelined request behind an unanswered one) reaches the app. The answers, the audit lines
and the limiter's bookkeeping are the app's own: one record, one `prove`, one refusal
format (answers.py).
"""

from __future__ import annotations

from typing import Any

from core.errors import Rejection
from receiver.answers import raw_refusal
from receiver.bodies import BODY_TIMEOUT, CLIENT_LEFT, too_large
from receiver.checks import early_verdict, prove
from receiver.record import SCOPE_KEY, RequestRecord, audit_request
from receiver.services import Services


class FastPath:
    """The protocol's `early` hook for one server's services."""

    def __init__(self, services: Services) -> None:
        self.svc = services

    def __call__(
        self,
        method: str,
        path: str,
        headers: list[tuple[bytes, bytes]],
        peer: str,
        scope: dict[str, Any],
        close: bool,
    ) -> bytes | ProvingBody | None:
        """The whole refusal, the body to read and prove, or None: on to the app."""
        record, screened = early_verdict(self.svc, method, path, headers, peer)
        scope[SCOPE_KEY] = record  # the Gate takes it from here, screened
        if screened.refusal is not None:
            return raw_refusal(screened.refusal, record.request_id, close=close)
        if screened.proving:
            return ProvingBody(self.svc, record, method, path, screened.signature)
        return None


class ProvingBody:
    """A right-token request whose body the protocol reads: `complete` proves it (None:
    hand it to the app), the others refuse it (always closing the connection)."""

    __slots__ = ("max_bytes", "method", "path", "record", "signature", "svc", "timeout_s")

    def __init__(
        self,
        svc: Services,
        record: RequestRecord,
        method: str,
        path: str,
        signature: str | None,
    ) -> None:
        self.svc, self.record, self.method, self.path = svc, record, method, path
        self.signature = signature
        self.max_bytes = svc.config.server.max_body_bytes
        self.timeout_s = svc.config.server.body_timeout_s

    def complete(self, body: bytes, close: bool) -> bytes | None:
        unproven = prove(self.svc, self.record, body, self.signature)
        return None if unproven is None else self._refuse(unproven, close)

    def too_large(self) -> bytes:
        return self._refuse(too_large(self.max_bytes), close=True)

    def timed_out(self) -> bytes:
        return self._refuse(BODY_TIMEOUT, close=True)

    def left(self) -> None:
        self._audit(CLIENT_LEFT)  # nobody to answer

    def _refuse(self, verdict: Rejection, close: bool) -> bytes:
        self._audit(verdict)
        return raw_refusal(verdict, self.record.request_id, close=close)

    def _audit(self, verdict: Rejection) -> None:
        self.record.refuse(verdict)
        audit_request(self.svc, self.record, self.method, self.path, verdict.status)
