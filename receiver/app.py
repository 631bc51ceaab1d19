"""The receiver's ASGI app, built in one place; the checks read top to bottom, in README's
order (receiver/checks.py declares it as CHECKS):

  screen.py   from the head alone: 1 one Authorization and one signature (400), 2 bearer
              token (right: no rate budget spent, on to 5), 3 rate limit (429, only
              without the right token), 4 Content-Type (415), declared length (413), then
              the wrong token's refusal (401)
  _webhook    5 capped body read (413/408/499), 6 signature (401), 7 JSON (400); then
              core/admit.py: 8 rule + args (200 ignored / 422), 9 dedupe + 10 durable
              commit (200 duplicate / 202 / 503)
Checks 1-6 are decided in the HTTP protocol (fastpath.py) whenever it can, else by the Gate
(gate.py, which also writes every request's audit line) and here. The token is checked
before the body is read, so a caller without it cannot make the receiver read 64 KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from core.admit import IGNORED_TEXT, Admission, Source, Verdict, admit
from core.errors import Rejection, StoreUnavailable
from receiver.answers import answer, refusal
from receiver.bodies import BODY_TIMEOUT, CLIENT_LEFT, read_capped
from receiver.checks import prove
from receiver.gate import INTERNAL_ERROR, Gate
from receiver.payload import canonical_digest, parse_body, to_event
from receiver.record import SCOPE_KEY, RequestRecord
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
    record = _record(request)
    config = svc.config.server
    try:
        try:
            body = await asyncio.wait_for(
                read_capped(request.stream(), config.max_body_bytes), config.body_timeout_s
            )
        except asyncio.TimeoutError:
            return refusal(record.refuse(BODY_TIMEOUT))
        except ClientDisconnect:
            return refusal(record.refuse(CLIENT_LEFT))
        if not record.authenticated:
            # Proved already when the protocol's fast path read the body (fastpath.py).
            unproven = prove(svc, record, body, request.headers.get("x-wandb-signature"))
            if unproven is not None:
                return refusal(record.refuse(unproven))
        digest = record.body_sha256
        assert digest is not None  # prove() recorded it
        data = parse_body(body, max_depth=config.max_json_depth)
        event = to_event(data)
        record.event = event.summary()
        source = Source(
            record.received_at, record.request_id, record.client, digest, canonical_digest(data)
        )
        admitted = await admit(
            svc.config.rules, svc.config.device_id, event, event.args, source, svc.committer.commit
        )
    except Rejection as exc:
        return refusal(record.refuse(exc))
    except StoreUnavailable:
        record.decide("unavailable", "store_unavailable")
        return answer(
            503,
            {"error": "store_unavailable", "detail": "try again later"},
            retry_after=RETRY_AFTER_STORE_S,
        )
    return _admitted(record, admitted)


def _admitted(record: RequestRecord, admitted: Admission) -> Response:
    """The answer to a delivery that proved itself and parsed (checks 8-10)."""
    if admitted.rule is not None:
        record.rule = admitted.rule.name
    if admitted.refusal is not None:
        return refusal(record.refuse(admitted.refusal))
    if admitted.outcome is Verdict.IGNORED:
        # Authentic, but nothing to do (no rule matches, or the device's own output).
        record.decide("ignored", admitted.reason)
        return answer(200, {"status": "ignored", "reason": IGNORED_TEXT[admitted.reason]})
    record.job_id = admitted.job_id
    if admitted.outcome is Verdict.DUPLICATE:
        record.decide("duplicate", "duplicate")
        return answer(200, {"status": "duplicate", "job_id": admitted.job_id})
    record.decide("accepted", "queued")
    return answer(202, {"status": "accepted", "job_id": admitted.job_id})


async def healthz(request: Request) -> Response:
    _record(request).decide("health", "ok")
    return answer(200, {"status": "ok"})


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return refusal(_record(request).refuse(Rejection(exc.status_code, reason, reason)))


async def _internal_error(request: Request, _exc: Exception) -> Response:
    return refusal(_record(request).refuse(INTERNAL_ERROR, "error"))


def _record(request: Request) -> RequestRecord:
    record: RequestRecord = request.scope[SCOPE_KEY]
    return record


async def _tick_audit(svc: Services) -> None:
    while True:
        await asyncio.sleep(min(1.0, svc.config.audit.summary_interval_s))
        svc.audit.tick(svc.monotonic())
