"""The outermost layer: one audit line per request, then checks 1-4 (screen.py) before
the Starlette app sees anything.

A pure ASGI class like Starlette's TrustedHostMiddleware, but placed outside Starlette:
a forged flood is refused here without Starlette's error middleware, routing or Request
objects, which more than doubles the refusals a single core can answer. Most requests are
screened earlier still, by the HTTP protocol's fast path (fastpath.py); the Gate screens
the rest (a pipelined request behind an unanswered one) the same way (checks.py).
"""

from __future__ import annotations

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import Rejection
from receiver.answers import send_refusal
from receiver.checks import early_verdict
from receiver.record import SCOPE_KEY, RequestRecord, audit_request
from receiver.services import Services

log = structlog.get_logger("edgehook.receiver")
# A verdict, never raised: one instance serves every request.
INTERNAL_ERROR = Rejection(500, "internal_error", "internal error")


class Gate:
    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.svc = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan
            return
        svc = self.svc
        method, path = scope["method"], scope["path"]
        record: RequestRecord | None = scope.get(SCOPE_KEY)
        verdict = None
        if record is None:
            peer = (scope.get("client") or ("unknown", 0))[0]
            record, screened = early_verdict(svc, method, path, scope["headers"], peer)
            verdict = screened.refusal
            scope[SCOPE_KEY] = record
        # else: screened already by the protocol's fast path, which answers refusals
        # itself: this request passed checks 1-4 (and, when it was read there, 5-6).
        request_id = ((b"x-request-id", record.request_id.encode("ascii")),)
        written = False

        async def send_and_audit(message: Message) -> None:
            nonlocal written
            if message["type"] == "http.response.start" and not written:
                written = True
                message["headers"] = [*message.get("headers", ()), *request_id]
                audit_request(svc, record, method, path, message["status"])
            await send(message)

        try:
            if verdict is not None:
                # The flood path: decided and audited already; answer without the wrapping
                # send.
                written = True
                await send_refusal(send, verdict, extra=request_id)
                return
            await self.app(scope, receive, send_and_audit)
        except Exception:
            # Logged once for the operator, never shown to the caller; the app's own handler
            # has usually answered 500 already (Starlette re-raises after answering).
            log.exception("request_failed", request_id=record.request_id)
            if not written:
                await send_refusal(send_and_audit, record.refuse(INTERNAL_ERROR, "error"))
