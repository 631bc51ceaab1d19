"""The receiver's ASGI app, built in one place; the checks read top to bottom.

  Gate (gate.py)   every request -> one audit line; then screen.py, from the head alone:
                   1 rate limit (429), 2 Content-Type (415), 3 declared length (413),
                   4 bearer token (401)
  _webhook         5 capped body read (413/408), 6 signature (401), 7 JSON (400),
                   8 rule + args (200 ignored / 422), 9 dedupe + 10 durable commit
                   (200 duplicate / 202 / 503)
The token is checked before the body is read, so an unauthenticated caller cannot make the
receiver read 64 KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from core.deliveries import delivery as make_delivery
from core.errors import Rejection, StoreUnavailable
from core.rules import ARTIFACT_ACTIONS, match
from receiver.answers import answer, refusal
from receiver.bodies import BODY_TIMEOUT, CLIENT_LEFT, read_capped
from receiver.gate import INTERNAL_ERROR, Gate, prove
from receiver.payload import canonical_digest, normalise, parse_body
from receiver.screen import WEBHOOK_PATHS
from receiver.services import Services

RETRY_AFTER_STORE_S = 5


def build_app(services: Services) -> Gate:
    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        services.committer.start()
        ticker = asyncio.create_task(_tick_audit(services))
        rules = [rule.name for rule in services.config.rules]
        services.audit.record("start", pid=os.getpid(), rules=rules)
        try:
            yield
        finally:
            ticker.cancel()
            services.committer.stop()
            services.audit.record("stop")
            services.audit.close()

    async def webhook(request: Request) -> Response:
        return await _webhook(services, request)

    routes = Starlette(
        routes=[
            # /webhook/ is the same endpoint: no redirect, whose Location would be built
            # from the client's Host header.
            *(Route(path, webhook, methods=["POST"]) for path in WEBHOOK_PATHS),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_exception, Exception: _internal_error},
        lifespan=lifespan,
    )
    routes.router.redirect_slashes = False
    return Gate(routes, services)


async def _webhook(svc: Services, request: Request) -> Response:
    record: dict[str, Any] = request.scope["edgehook"]
    config = svc.config.server
    try:
        try:
            body = await asyncio.wait_for(
                read_capped(request.stream(), config.max_body_bytes), config.body_timeout_s
            )
        except asyncio.TimeoutError:
            return refusal(record, BODY_TIMEOUT)
        except ClientDisconnect:
            return refusal(record, CLIENT_LEFT)
        if not record.get("authenticated"):
            # Proved already when the protocol's fast path read the body (fastpath.py).
            unproven = prove(svc, record, body, request.headers.get("x-wandb-signature"))
            if unproven is not None:
                return refusal(record, unproven)
        digest = record["body_sha256"]

        data = parse_body(body, max_depth=config.max_json_depth)
        event = normalise(data)
        record["event"] = event.summary()
        if event.produced_by is not None and event.produced_by == svc.config.device_id:
            return _ignored(record, "produced_here", "produced here")
        rule = match(svc.config.rules, event)
        if rule is None:
            return _ignored(record, "no_rule", "no rule matches")
        record["rule"] = rule.name
        args = rule.validate_args(event.args)
        if rule.action in ARTIFACT_ACTIONS and event.version_string is None:
            raise Rejection(
                422,
                "missing_artifact",
                f"rule '{rule.name}' needs "
                "artifact_version_string (or entity, project, collection and alias)",
            )
        delivery = make_delivery(
            event,
            rule,
            args,
            received_at=record["received_at"],
            request_id=record["request_id"],
            client=record["client"],
            body_sha256=digest,
            canonical_sha256=canonical_digest(data),
        )
        committed = await svc.committer.commit(delivery)
    except Rejection as exc:
        return refusal(record, exc)
    except StoreUnavailable:
        return answer(
            record,
            503,
            "unavailable",
            "store_unavailable",
            {"error": "store_unavailable", "detail": "try again later"},
            retry_after=RETRY_AFTER_STORE_S,
        )
    if committed.produced_here:
        return _ignored(record, "produced_here", "produced here")
    record["job_id"] = committed.job_id
    if committed.duplicate:
        return answer(
            record,
            200,
            "duplicate",
            "duplicate",
            {"status": "duplicate", "job_id": committed.job_id},
        )
    return answer(
        record, 202, "accepted", "queued", {"status": "accepted", "job_id": committed.job_id}
    )


def _ignored(record: dict[str, Any], reason: str, text: str) -> Response:
    """200: authentic, but nothing to do (no rule matches, or the device's own output)."""
    return answer(record, 200, "ignored", reason, {"status": "ignored", "reason": text})


async def healthz(request: Request) -> Response:
    return answer(request.scope["edgehook"], 200, "health", "ok", {"status": "ok"})


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return refusal(request.scope["edgehook"], Rejection(exc.status_code, reason, reason))


async def _internal_error(request: Request, _exc: Exception) -> Response:
    return refusal(request.scope["edgehook"], INTERNAL_ERROR, decision="error")


async def _tick_audit(svc: Services) -> None:
    while True:
        await asyncio.sleep(min(1.0, svc.config.audit.summary_interval_s))
        svc.audit.tick(svc.monotonic())
