"""The pages (session cookie): the same data as the API (api.py), rendered by Jinja with
autoescape on. An action's button posts to its page route, which asks for confirmation (a
**Confirm** button) before anything changes; every form carries the session's CSRF token."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from jinja2 import Environment
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from console import api, auth, views

if TYPE_CHECKING:
    from console.app import Console


def when(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "" if ts is None else str(ts)
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def ago(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    s = int(seconds)
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def routes(console: Console, env: Environment) -> list[Route]:
    def render(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        session = request.scope.get("console.who")
        flash = console.flashes.pop(session.id, None) if isinstance(session, auth.Session) else None
        html = env.get_template(name).render(
            csrf=session.csrf if isinstance(session, auth.Session) else "",
            partial=request.query_params.get("partial") == "1",
            flash=flash,
            query=dict(request.query_params),
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def session_of(request: Request) -> auth.Session:
        session = request.scope.get("console.who")
        assert isinstance(session, auth.Session)
        return session

    async def checked_form(request: Request) -> dict[str, str]:
        form = await request.form()
        values = {k: str(v) for k, v in form.items() if isinstance(v, str)}
        if not auth.csrf_matches(session_of(request), values.get("csrf")):
            raise HTTPException(403, "the form's CSRF token is missing or stale; reload the page")
        return values

    # -- login -------------------------------------------------------------------------------

    async def login(request: Request) -> Response:
        if request.method == "GET":
            target = request.query_params.get("next", "/")
            return render(request, "login.html", page="login", next=_local(target), error=None)
        form = await request.form()
        target = str(form.get("next") or "/")
        address = request.client.host if request.client else "-"
        now = console.clock()
        wait = console.limiter.retry_after(address, now)
        if wait is not None:
            response = render(request, "login.html", 429, page="login", next=_local(target),
                              error=f"Too many attempts; try again in {wait} s.")  # fmt: skip
            response.headers["Retry-After"] = str(wait)
            return response
        offered = form.get("token")
        if not isinstance(offered, str) or not auth.token_matches(console.token, offered):
            console.limiter.failed(address, now)
            return render(request, "login.html", 401, page="login", next=_local(target),
                          error="Wrong token.")  # fmt: skip
        session = console.sessions.create(address, now)
        response = RedirectResponse(_local(target), status_code=303)
        response.set_cookie(
            auth.SESSION_COOKIE,
            session.id,
            max_age=int(console.sessions.lifetime_s),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    async def logout(request: Request) -> Response:
        await checked_form(request)
        console.sessions.end(session_of(request).id)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(auth.SESSION_COOKIE, path="/")
        return response

    # -- pages ------------------------------------------------------------------------------

    def overview(request: Request) -> Response:
        return render(request, "overview.html", page="overview", data=api.overview(console),
                      now=time.time())  # fmt: skip

    def deliveries(request: Request) -> Response:
        data = api.deliveries(console, request.query_params)
        keep = {k: v for k, v in request.query_params.items() if k not in ("after", "partial")}
        return render(request, "deliveries.html", page="deliveries", data=data,
                      next_url=_next(keep, "after", data["next_after"]))  # fmt: skip

    def jobs(request: Request) -> Response:
        data = api.jobs(console, request.query_params)
        keep = {k: v for k, v in request.query_params.items() if k not in ("before", "partial")}
        return render(request, "jobs.html", page="jobs", data=data, states=views.STATES,
                      next_url=_next(keep, "before", data["next_before"]))  # fmt: skip

    def job(request: Request) -> Response:
        data = api.job(console, int(request.path_params["job_id"]))
        return render(request, "job.html", page="jobs", job=data)

    def job_log(request: Request) -> Response:
        piece = api._log(console, request)
        return PlainTextResponse(
            piece["text"],
            headers={"X-Log-Offset": str(piece["offset"]), "X-Job-State": piece["state"]},
        )

    def models(request: Request) -> Response:
        return render(request, "models.html", page="models", data=api.models(console))

    def audit(request: Request) -> Response:
        force = request.query_params.get("verify") == "1"
        return render(request, "audit.html", page="audit",
                      chains=api.audit_chains(console, force=force),
                      actions=views.operator_lines(console.config, 50))  # fmt: skip

    def download(request: Request) -> Response:
        from starlette.responses import StreamingResponse

        from core.audit import list_segments
        from core.auditread import chains

        wanted = request.path_params["chain"]
        found = dict(chains(console.config.audit_dir)).get(wanted)
        if found is None:
            raise HTTPException(404, f"no audit chain {wanted}")
        segments = [p for _, p in list_segments(found)]

        def stream() -> Any:
            for path in segments:
                with path.open("rb") as handle:
                    yield from iter(lambda: handle.read(65536), b"")

        return StreamingResponse(
            stream(),
            media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="{wanted}-audit.jsonl"'},
        )

    # -- actions: confirm, then act --------------------------------------------------------

    def action(what: str, act: Any, describe: Any, back: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            form = await checked_form(request)
            if form.get("confirm") != "yes":
                return render(request, "confirm.html", page="", what=what,
                              question=describe(request), action=request.url.path,
                              back=back(request))  # fmt: skip
            message = act(request)
            console.flashes[session_of(request).id] = message
            return RedirectResponse(back(request), status_code=303)

        return endpoint

    def job_no(request: Request) -> int:
        return int(request.path_params["job_id"])

    return [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", overview),
        Route("/deliveries", deliveries),
        Route("/jobs", jobs),
        Route("/jobs/{job_id:int}", job),
        Route("/jobs/{job_id:int}/log", job_log),
        Route("/models", models),
        Route("/audit", audit),
        Route("/audit/{chain}/download", download),
        Route("/jobs/{job_id:int}/retry", action(
            "Retry", lambda r: api.retry(console, r, job_no(r)),
            lambda r: f"Queue job {job_no(r)} again?", lambda r: f"/jobs/{job_no(r)}"),
            methods=["POST"]),
        Route("/jobs/{job_id:int}/cancel", action(
            "Cancel", lambda r: api.cancel(console, r, job_no(r)),
            lambda r: f"Cancel job {job_no(r)}?", lambda r: f"/jobs/{job_no(r)}"),
            methods=["POST"]),
        Route("/jobs/retry-failed", action(
            "Retry all failed", lambda r: api.retry_failed(console, r),
            lambda r: f"Queue the failed jobs again (the newest {api.RETRY_ALL_LIMIT} at most)?",
            lambda r: "/jobs?state=failed"), methods=["POST"]),
        Route("/models/{name}/activate", action(
            "Make active", lambda r: api.activate(console, r, r.path_params["name"]),
            lambda r: f"Make model {r.path_params['name']} the active model?",
            lambda r: "/models"), methods=["POST"]),
    ]  # fmt: skip


def _local(target: str) -> str:
    """Only a path on this console (never //host or a scheme): no open redirect."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _next(keep: dict[str, str], key: str, value: Any) -> str | None:
    return None if value is None else "?" + urlencode({**keep, key: value})
