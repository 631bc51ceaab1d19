"""The outermost layer: one audit line per request, then checks 1-4 (screen.py) before
the Starlette app sees anything.

A pure ASGI class like Starlette's TrustedHostMiddleware, but placed outside Starlette:
a forged flood is refused here without Starlette's error middleware, routing or Request
objects, which more than doubles the refusals a single core can answer.
"""

from __future__ import annotations

import os
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from receiver.answers import send_refusal
from receiver.errors import Rejection
from receiver.screen import screen
from receiver.services import Services

log = structlog.get_logger("edgehook.receiver")
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
        started = svc.monotonic()
        peer = (scope.get("client") or ("unknown", 0))[0]
        record: dict[str, Any] = {
            "request_id": os.urandom(8).hex(),
            "client": svc.resolver.resolve(peer, scope["headers"]),
            "received_at": svc.clock(),
        }
        scope["edgehook"] = record
        written = False

        async def send_and_audit(message: Message) -> None:
            nonlocal written
            if message["type"] == "http.response.start" and not written:
                written = True
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", record["request_id"].encode("ascii")),
                ]
                audit_request(svc, record, scope, message["status"], started)
            await send(message)

        try:
            verdict = screen(
                scope["method"],
                scope["path"],
                dict(scope["headers"]),
                client=record["client"],
                now=started,
                limiter=svc.limiter,
                tokens=svc.secrets.access_tokens,
                max_body_bytes=svc.config.server.max_body_bytes,
            )
            if verdict is not None:
                # The flood path: audit and answer directly, without the wrapping send.
                written = True
                record.update(decision="rejected", reason=verdict.reason)
                audit_request(svc, record, scope, verdict.status, started)
                request_id = ((b"x-request-id", record["request_id"].encode("ascii")),)
                await send_refusal(send, record, verdict, extra=request_id)
                return
            await self.app(scope, receive, send_and_audit)
        except Exception:
            # Logged once for the operator, never shown to the caller; the app's own handler
            # has usually answered 500 already (Starlette re-raises after answering).
            log.exception("request_failed", request_id=record["request_id"])
            if not written:
                await send_refusal(send_and_audit, record, INTERNAL_ERROR, decision="error")


def audit_request(
    svc: Services, record: dict[str, Any], scope: Scope, status: int, started: float
) -> None:
    """The request's audit line. Unauthenticated rejections are sampled (flood summaries)."""
    now = svc.monotonic()
    fields = {
        "request_id": record["request_id"],
        "client": record["client"],
        "method": scope["method"],
        "path": scope["path"][:128],
        "status": status,
        "decision": record.get("decision", "rejected"),
        "reason": record.get("reason", "http_error"),
    }
    for key in ("body_sha256", "body_len", "event", "rule", "job_id"):
        if key in record:
            fields[key] = record[key]
    fields["latency_ms"] = round((now - started) * 1000, 2)
    try:
        if fields["decision"] == "rejected" and not record.get("authenticated"):
            svc.audit.record_rejection(fields, now)
        else:
            svc.audit.record("request", **fields)
    except OSError as exc:
        # Disk full or the log directory gone: the answer (maybe a committed 202) still goes
        # out; the operator log says the audit line is missing.
        log.error("audit_write_failed", request_id=record["request_id"], error=str(exc))
