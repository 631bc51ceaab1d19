"""The JSON API (`/api/...`, bearer token): each page's twin, with the same query parameters
and the same data, plus the actions. Also the one place errors become answers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from jinja2 import Environment
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from console import params, views
from console.deliveryindex import Filters
from console.registryview import models_page
from core.errors import StoreUnavailable
from core.store import connect
from pipeline import operator
from pipeline.models import registry
from pipeline.queue import SqliteQueue

if TYPE_CHECKING:
    from console.app import Console

RETRY_ALL_LIMIT = 500  # "Retry all failed" queues at most this many (the newest) per click


@contextmanager
def store(console: Console) -> Iterator[SqliteQueue]:
    """The store for one request; it changes only through pipeline.operator's actions."""
    conn = connect(console.config.store_path)
    try:
        yield SqliteQueue(conn)
    finally:
        conn.close()


def who(console: Console, request: Request) -> operator.Operator:
    client = request.client.host if request.client else None
    return operator.Operator(user="console", via="console", origin=client)


# -- the data each page shows -------------------------------------------------------------


def overview(console: Console) -> dict[str, Any]:
    now = console.clock()
    with store(console) as queue:
        depth = views.queue_depth(queue.conn)
        oldest = views.oldest_queued(queue.conn)
        watched = views.watched(queue.conn)
    console.index.refresh(wait=False)
    last = console.index.page(Filters(), 1)
    polls = [w["last_poll_at"] for w in watched if w["last_poll_at"] is not None]
    return {
        "generated_at": now,
        "processes": console.health.processes(now, max(polls) if polls else None),
        "queue": depth,
        "oldest_queued_wait_s": None if oldest is None else round(max(0.0, now - oldest), 1),
        "last_delivery": last[0] if last else None,
        "watched": watched,
        "active_model": registry.state(console.config.models_dir).get("active"),
        "chains": audit_chains(console, cached_only=True),
    }


def audit_chains(
    console: Console, *, force: bool = False, cached_only: bool = False
) -> list[dict[str, Any]]:
    return [
        {
            "chain": name,
            "ok": report.ok,
            "lines": report.lines,
            "last_seq": report.last_seq,
            "damage": None if report.damage is None else str(report.damage),
            "notes": report.notes,
            "verified_at": at,
        }
        for name, at, report in console.chain_reports(force=force, cached_only=cached_only)
    ]


def deliveries(console: Console, query: Any) -> dict[str, Any]:
    filters = params.filters(query)
    limit = params.limit(query)
    console.index.refresh(wait=False)
    rows = console.index.page(filters, limit + 1, params.cursor(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "filters": {k: v for k, v in vars(filters).items() if v not in (None, False)},
        "deliveries": rows,
        "next_after": f"{rows[-1]['ts']!r}:{rows[-1]['id']}" if more and rows else None,
    }


def jobs(console: Console, query: Any) -> dict[str, Any]:
    with store(console) as queue:
        before = params.integer(query, "before", None, 1, 2**62)
        page = views.jobs_page(queue, params.state(query), params.limit(query), before)
        page["counts"] = views.queue_depth(queue.conn)
    return page


def job(console: Console, job_id: int) -> dict[str, Any]:
    with store(console) as queue:
        detail = views.job_detail(queue, console.config, job_id)
    if detail is None:
        raise HTTPException(404, f"no job {job_id}")
    return detail


def models(console: Console) -> dict[str, Any]:
    actions = [r for r in views.operator_lines(console.config, 1000) if r.get("model")]
    with store(console) as queue:
        return models_page(console.config, queue, actions)


# -- actions --------------------------------------------------------------------------------


def retry(console: Console, request: Request, job_id: int) -> str:
    with store(console) as queue:
        return operator.retry(
            queue, console.config, console.audit_key, who(console, request), job_id, time.time()
        )


def cancel(console: Console, request: Request, job_id: int) -> str:
    with store(console) as queue:
        return operator.cancel(
            queue, console.config, console.audit_key, who(console, request), job_id, time.time()
        )


def retry_failed(console: Console, request: Request) -> str:
    with store(console) as queue:
        done = operator.retry_failed(
            queue, console.config, console.audit_key, who(console, request), time.time(),
            RETRY_ALL_LIMIT,
        )  # fmt: skip
    return f"{len(done)} failed job(s) queued again"


def activate(console: Console, request: Request, name: str) -> str:
    operator.activate(console.config, console.audit_key, who(console, request), name)
    return f"model {name} is active; the predictor follows it"


# -- routes ---------------------------------------------------------------------------------


def routes(console: Console) -> list[Route]:
    def get(build: Any) -> Any:
        def endpoint(request: Request) -> Response:
            return JSONResponse(build(request))

        return endpoint

    def post(act: Any) -> Any:
        def endpoint(request: Request) -> Response:
            return JSONResponse({"ok": True, "message": act(request)})

        return endpoint

    def job_id(request: Request) -> int:
        return int(request.path_params["job_id"])

    return [
        Route("/api/overview", get(lambda r: overview(console))),
        Route("/api/deliveries", get(lambda r: deliveries(console, r.query_params))),
        Route("/api/jobs", get(lambda r: jobs(console, r.query_params))),
        Route("/api/jobs/{job_id:int}", get(lambda r: job(console, job_id(r)))),
        Route("/api/jobs/{job_id:int}/log", get(lambda r: _log(console, r))),
        Route("/api/models", get(lambda r: models(console))),
        Route("/api/audit", get(lambda r: {"chains": audit_chains(console, force=True)})),
        Route("/api/jobs/{job_id:int}/retry", post(lambda r: retry(console, r, job_id(r))),
              methods=["POST"]),
        Route("/api/jobs/{job_id:int}/cancel", post(lambda r: cancel(console, r, job_id(r))),
              methods=["POST"]),
        Route("/api/jobs/retry-failed", post(lambda r: retry_failed(console, r)),
              methods=["POST"]),
        Route("/api/models/{name}/activate",
              post(lambda r: activate(console, r, r.path_params["name"])), methods=["POST"]),
    ]  # fmt: skip


def _log(console: Console, request: Request) -> dict[str, Any]:
    attempt = params.integer(request.query_params, "attempt", None, 1, 1000)
    offset = params.integer(request.query_params, "offset", None, 0, 2**62)
    with store(console) as queue:
        piece = views.job_log(
            queue, console.config, int(request.path_params["job_id"]), attempt,
            -1 if offset is None else offset,
        )  # fmt: skip
    if piece is None:
        raise HTTPException(404, f"no job {request.path_params['job_id']}")
    return piece


# -- errors -> answers ----------------------------------------------------------------------

REASONS = {400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
           409: "conflict", 429: "too_many_requests", 503: "unavailable"}  # fmt: skip


def handlers(env: Environment) -> dict[Any, Any]:
    def answer(request: Request, status: int, detail: str) -> Response:
        path = request.url.path
        if path.startswith("/api/") or path == "/metrics":
            body = {"error": REASONS.get(status, "error"), "detail": detail}
            return JSONResponse(body, status_code=status)
        html = env.get_template("error.html").render(status=status, detail=detail, page="")
        return HTMLResponse(html, status_code=status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return answer(request, exc.status_code, str(exc.detail))

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, operator.ActionRefused)
        return answer(request, exc.status, str(exc))

    async def store_down(request: Request, exc: Exception) -> Response:
        return answer(request, 503, str(exc))

    return {
        HTTPException: http_error,
        operator.ActionRefused: refused,
        StoreUnavailable: store_down,
    }
