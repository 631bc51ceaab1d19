"""The receiver's ASGI app, built in one place. The checks read top to bottom in `webhook`;
each is a plain function elsewhere, and `_answer` is the one place verdicts become HTTP.

Order, cheapest first: rate limit (429), Content-Type (415), declared length (413), bearer
token (401), capped body read (413), signature (401), JSON (400), rule and args (200
ignored / 422), commit with dedupe (200 duplicate / 202 / 503). The token is checked before
the body is read so an unauthenticated caller cannot make the receiver read 64 KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets as random_tokens
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from receiver.audit import AuditLog
from receiver.auth import WWW_AUTHENTICATE, bearer_valid
from receiver.bodies import check_declared_length, read_capped
from receiver.clients import ClientResolver
from receiver.committer import Committer
from receiver.config import Config
from receiver.credentials import Secrets
from receiver.errors import Rejection, StoreUnavailable
from receiver.payload import normalise, parse_body
from receiver.ratelimit import RateLimiter
from receiver.rules import ARTIFACT_ACTIONS, match
from receiver.signatures import signature_valid
from receiver.store import Delivery

log = structlog.get_logger("edgehook.receiver")
_COMMON_HEADERS = {"cache-control": "no-store", "x-content-type-options": "nosniff"}
RETRY_AFTER_STORE_S = 5


@dataclass
class Services:
    """Everything the app needs, made once at start-up (tests build their own)."""

    config: Config
    secrets: Secrets
    limiter: RateLimiter
    resolver: ClientResolver
    audit: AuditLog
    committer: Committer
    clock: Callable[[], float]  # wall time: received_at, the duplicate window, audit stamps
    monotonic: Callable[[], float]  # intervals: rate limits, latency


def build_app(services: Services) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        services.committer.start()
        ticker = asyncio.create_task(_tick_audit(services))
        services.audit.record(
            "start", pid=os.getpid(), rules=[r.name for r in services.config.rules]
        )
        try:
            yield
        finally:
            ticker.cancel()
            services.committer.stop()
            services.audit.record("stop")
            services.audit.close()

    async def webhook(request: Request) -> Response:
        return await _webhook(services, request)

    return Starlette(
        routes=[
            Route("/webhook", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        middleware=[
            Middleware(AuditMiddleware, services=services),
            Middleware(RateLimitMiddleware, services=services),
        ],
        exception_handlers={HTTPException: _http_exception},
        lifespan=lifespan,
    )


async def _webhook(svc: Services, request: Request) -> Response:
    record: dict[str, Any] = request.scope["edgehook"]
    config = svc.config.server
    client = record["client"]
    try:
        headers = request.headers
        if headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise Rejection(415, "bad_content_type", "Content-Type must be application/json")
        check_declared_length(headers.get("content-length"), config.max_body_bytes)
        if not bearer_valid(headers.get("authorization"), svc.secrets.access_token):
            svc.limiter.auth_failed(client, svc.monotonic())
            raise Rejection(401, "bad_token", "unauthorized")
        try:
            body = await asyncio.wait_for(
                read_capped(request.stream(), config.max_body_bytes), config.body_timeout_s)
        except asyncio.TimeoutError as exc:
            raise Rejection(408, "body_timeout", "body not received in time") from exc
        digest = hashlib.sha256(body).hexdigest()
        record.update(body_sha256=digest, body_len=len(body))
        signature = headers.get("x-wandb-signature")
        if not signature_valid(body, signature, svc.secrets.signing_secrets):
            svc.limiter.auth_failed(client, svc.monotonic())
            reason = "missing_signature" if signature is None else "bad_signature"
            raise Rejection(401, reason, "unauthorized")
        record["authenticated"] = True

        event = normalise(parse_body(body, max_depth=config.max_json_depth))
        record["event"] = event.summary()
        rule = match(svc.config.rules, event)
        if rule is None:
            return _answer(
                record,
                200,
                "ignored",
                "no_rule",
                {"status": "ignored", "reason": "no rule matches"},
            )
        record["rule"] = rule.name
        args = rule.validate_args(event.args)
        if rule.action in ARTIFACT_ACTIONS and event.version_string is None:
            raise Rejection(
                422,
                "missing_artifact",
                f"rule '{rule.name}' needs "
                "artifact_version_string (or entity, project, collection and alias)",
            )
        delivery = Delivery(
            received_at=record["received_at"],
            request_id=record["request_id"],
            client=client,
            body_sha256=digest,
            event_type=event.event_type,
            version_string=event.version_string,
            event_json=json.dumps({**json.loads(event.to_json()), "args": args}, sort_keys=True),
            rule=rule.name,
            action=rule.action,
            args_json=json.dumps(args, sort_keys=True),
        )
        committed = await svc.committer.commit(delivery)
    except Rejection as exc:
        return _refusal(record, exc)
    except StoreUnavailable:
        response = _answer(
            record,
            503,
            "unavailable",
            "store_unavailable",
            {"error": "store_unavailable", "detail": "try again later"},
        )
        response.headers["retry-after"] = str(RETRY_AFTER_STORE_S)
        return response
    record["job_id"] = committed.job_id
    if committed.duplicate:
        return _answer(
            record,
            200,
            "duplicate",
            "duplicate",
            {"status": "duplicate", "job_id": committed.job_id},
        )
    return _answer(
        record, 202, "accepted", "queued", {"status": "accepted", "job_id": committed.job_id}
    )


async def healthz(request: Request) -> Response:
    return _answer(request.scope["edgehook"], 200, "health", "ok", {"status": "ok"})


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _refusal(request.scope["edgehook"], Rejection(exc.status_code, reason, reason))


def _refusal(record: dict[str, Any], exc: Rejection) -> Response:
    if exc.status == 401:
        # The same answer for a bad token and a bad signature: no oracle for either.
        response = _answer(record, 401, "rejected", exc.reason, {"error": "unauthorized"})
        response.headers["www-authenticate"] = WWW_AUTHENTICATE
        return response
    return _answer(
        record, exc.status, "rejected", exc.reason, {"error": exc.reason, "detail": exc.detail}
    )


def _answer(
    record: dict[str, Any], status: int, decision: str, reason: str, body: dict[str, Any]
) -> Response:
    record.update(decision=decision, reason=reason)
    return JSONResponse(body, status_code=status, headers=_COMMON_HEADERS)


class RateLimitMiddleware:
    """429 + Retry-After before anything else is looked at."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.svc = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = scope["edgehook"]
        wait = self.svc.limiter.check(record["client"], self.svc.monotonic())
        if wait is None:
            await self.app(scope, receive, send)
            return
        response = _answer(
            record,
            429,
            "rejected",
            "rate_limited",
            {"error": "rate_limited", "detail": "too many requests"},
        )
        response.headers["retry-after"] = str(int(wait))
        await response(scope, receive, send)


class AuditMiddleware:
    """Outermost layer: resolves the client, and writes one audit line per request when the
    response starts (so the line exists before the caller sees the answer)."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.svc = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        svc = self.svc
        peer = (scope.get("client") or ("unknown", 0))[0]
        started = svc.monotonic()
        record: dict[str, Any] = {
            "request_id": random_tokens.token_hex(8),
            "client": svc.resolver.resolve(peer, scope["headers"]),
            "received_at": svc.clock(),
        }
        scope["edgehook"] = record
        written = False

        async def send_and_audit(message: Message) -> None:
            nonlocal written
            if message["type"] == "http.response.start" and not written:
                written = True
                message.setdefault("headers", []).append(
                    (b"x-request-id", record["request_id"].encode("ascii"))
                )
                self._write(record, scope, message["status"], started)
            await send(message)

        try:
            await self.app(scope, receive, send_and_audit)
        except Exception:
            log.exception("request_failed", request_id=record["request_id"])
            if written:
                raise
            response = _answer(record, 500, "error", "internal_error", {"error": "internal"})
            await response(scope, receive, send_and_audit)

    def _write(self, record: dict[str, Any], scope: Scope, status: int, started: float) -> None:
        fields = {
            "request_id": record["request_id"],
            "client": record["client"],
            "method": scope["method"],
            "path": scope["path"][:128],
            "status": status,
            "decision": record.get("decision", "rejected"),
            "reason": record.get("reason", "http_error"),
            "body_sha256": record.get("body_sha256"),
            "body_len": record.get("body_len"),
            "event": record.get("event"),
            "rule": record.get("rule"),
            "job_id": record.get("job_id"),
            "latency_ms": round((self.svc.monotonic() - started) * 1000, 2),
        }
        fields = {k: v for k, v in fields.items() if v is not None}
        try:
            if fields["decision"] == "rejected" and not record.get("authenticated"):
                self.svc.audit.record_rejection(fields, self.svc.monotonic())
            else:
                self.svc.audit.record("request", **fields)
        except OSError as exc:
            # Disk full or the log directory gone: the answer (maybe a committed 202) still
            # goes out; the operator log says the audit line is missing.
            log.error("audit_write_failed", request_id=record["request_id"], error=str(exc))


async def _tick_audit(svc: Services) -> None:
    while True:
        await asyncio.sleep(min(1.0, svc.config.audit.summary_interval_s))
        svc.audit.tick(svc.monotonic())
