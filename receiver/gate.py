"""The outermost layer: one audit line per request, then checks 1-4 (screen.py) before
the Starlette app sees anything.

A pure ASGI class like Starlette's TrustedHostMiddleware, but placed outside Starlette:
a forged flood is refused here without Starlette's error middleware, routing or Request
objects, which more than doubles the refusals a single core can answer.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import Rejection
from receiver.answers import send_refusal
from receiver.screen import Screened, screen
from receiver.services import Services
from receiver.signatures import signature_valid

log = structlog.get_logger("edgehook.receiver")
# Verdicts, never raised: one instance each serves every request.
INTERNAL_ERROR = Rejection(500, "internal_error", "internal error")
MISSING_SIGNATURE = Rejection(401, "missing_signature", "unauthorized")
BAD_SIGNATURE = Rejection(401, "bad_signature", "unauthorized")


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
        if "edgehook" in scope:
            # Screened already by the protocol's fast path (protocol.py), which answers
            # refusals itself: this request passed checks 1-4.
            record: dict[str, Any] = scope["edgehook"]
            verdict = None
        else:
            peer = (scope.get("client") or ("unknown", 0))[0]
            record, screened = early_verdict(svc, method, path, scope["headers"], peer)
            verdict = screened.refusal
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
                audit_request(svc, record, method, path, message["status"])
            await send(message)

        try:
            if verdict is not None:
                # The flood path: audited already; answer without the wrapping send.
                written = True
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


def early_verdict(
    svc: Services, method: str, path: str, headers: Sequence[tuple[bytes, bytes]], peer: str
) -> tuple[dict[str, Any], Screened]:
    """Checks 1-4 on a request's head (screen.py): its record, and the verdict (a refusal is
    audited already). Called once a request, by the protocol's fast path or by the Gate."""
    started = svc.monotonic()
    record: dict[str, Any] = {
        "request_id": os.urandom(8).hex(),
        "client": svc.resolver.resolve(peer, headers),
        "received_at": svc.clock(),
        "started": started,
    }
    screened = screen(
        method,
        path,
        headers,
        client=record["client"],
        now=started,
        limiter=svc.limiter,
        tokens=svc.secrets.access_tokens,
        max_body_bytes=svc.config.server.max_body_bytes,
    )
    if screened.refusal is not None:
        record.update(decision="rejected", reason=screened.refusal.reason)
        audit_request(svc, record, method, path, screened.refusal.status)
    return record, screened


def prove(
    svc: Services, record: dict[str, Any], body: bytes, signature: str | None
) -> Rejection | None:
    """Check 6, the signature over the whole body: the refusal (401, told apart from a bad
    token only in the audit log), or None once the request has proved itself. One function
    for the protocol's fast path and the app, so both decide and record alike."""
    record.update(body_sha256=hashlib.sha256(body).hexdigest(), body_len=len(body))
    if not signature_valid(body, signature, svc.secrets.signing_secrets):
        svc.limiter.auth_failed(record["client"], svc.monotonic())
        return MISSING_SIGNATURE if signature is None else BAD_SIGNATURE
    record["authenticated"] = True
    return None


def audit_request(
    svc: Services, record: dict[str, Any], method: str, path: str, status: int
) -> None:
    """The request's audit line. Unauthenticated rejections are sampled (flood summaries)."""
    now = svc.monotonic()
    fields = {
        "request_id": record["request_id"],
        "client": record["client"],
        "method": method,
        "path": path[:128],
        "status": status,
        "decision": record.get("decision", "rejected"),
        "reason": record.get("reason", "http_error"),
    }
    for key in ("body_sha256", "body_len", "event", "rule", "job_id"):
        if key in record:
            fields[key] = record[key]
    fields["latency_ms"] = round((now - record["started"]) * 1000, 2)
    if record.get("authenticated"):
        # Proved itself (token and signature): always its own line, never sampled, so a
        # refused genuine delivery can be found (`audit show --lost`) and sent again.
        fields["proven"] = True
    _write(svc, fields, now, sampled=fields["decision"] == "rejected" and "proven" not in fields)


def audit_connection_refusal(svc: Services, peer: str, status: int, reason: str) -> None:
    """A refusal made below the app (protocol.py: over capacity, head timeout or too large,
    unparsable request): no request line or headers to record, only who and why."""
    fields = {
        "request_id": os.urandom(8).hex(),
        "client": peer,
        "method": "-",
        "path": "-",
        "status": status,
        "decision": "rejected",
        "reason": reason,
    }
    _write(svc, fields, svc.monotonic(), sampled=True)


def _write(svc: Services, fields: dict[str, Any], now: float, *, sampled: bool) -> None:
    """Unproven rejections are sampled (flood summaries count the rest); the others always
    get their own line."""
    try:
        if sampled:
            svc.audit.record_rejection(fields, now)
        else:
            svc.audit.record("request", **fields)
    except OSError as exc:
        # Disk full or the log directory gone: the answer (maybe a committed 202) still goes
        # out; the operator log says the audit line is missing.
        log.error("audit_write_failed", request_id=fields["request_id"], error=str(exc))
