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
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from console import api, auth, views
from core.audit import list_segments
from core.auditread import chains

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


class Pages:
    """The page handlers, bound to one console and its templates."""

    def __init__(self, console: Console, env: Environment) -> None:
        self.console = console
        self.env = env

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        session = request.scope.get("console.who")
        flash = None
        if isinstance(session, auth.Session):
            flash = self.console.flashes.pop(session.id, None)
        html = self.env.get_template(name).render(
            csrf=session.csrf if isinstance(session, auth.Session) else "",
            partial=request.query_params.get("partial") == "1",
            flash=flash,
            query=dict(request.query_params),
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def session_of(self, request: Request) -> auth.Session:
        session = request.scope.get("console.who")
        assert isinstance(session, auth.Session)
        return session

    async def checked_form(self, request: Request) -> dict[str, str]:
        form = await request.form()
        values = {k: str(v) for k, v in form.items() if isinstance(v, str)}
        if not auth.csrf_matches(self.session_of(request), values.get("csrf")):
            raise HTTPException(403, "the form's CSRF token is missing or stale; reload the page")
        return values

    # -- login -------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            target = request.query_params.get("next", "/")
            return self.render(request, "login.html", page="login", next=_local(target), error=None)
        form = await request.form()
        target = str(form.get("next") or "/")
        address = request.client.host if request.client else "-"
        now = self.console.clock()
        wait = self.console.limiter.retry_after(address, now)
        if wait is not None:
            response = self.render(request, "login.html", 429, page="login", next=_local(target),
                              error=f"Too many attempts; try again in {wait} s.")  # fmt: skip
            response.headers["Retry-After"] = str(wait)
            return response
        offered = form.get("token")
        if not isinstance(offered, str) or not auth.token_matches(self.console.token, offered):
            self.console.limiter.failed(address, now)
            return self.render(request, "login.html", 401, page="login", next=_local(target),
                          error="Wrong token.")  # fmt: skip
        session = self.console.sessions.create(address, now)
        response = RedirectResponse(_local(target), status_code=303)
        response.set_cookie(
            auth.SESSION_COOKIE,
            session.id,
            max_age=int(self.console.sessions.lifetime_s),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    async def logout(self, request: Request) -> Response:
        await self.checked_form(request)
        self.console.sessions.end(self.session_of(request).id)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(auth.SESSION_COOKIE, path="/")
        return response

    # -- pages ------------------------------------------------------------------------------

    def overview(self, request: Request) -> Response:
        data = api.overview(self.console)
        return self.render(request, "overview.html", page="overview", data=data, now=time.time())

    def deliveries(self, request: Request) -> Response:
        data = api.deliveries(self.console, request.query_params)
        keep = {k: v for k, v in request.query_params.items() if k not in ("after", "partial")}
        return self.render(request, "deliveries.html", page="deliveries", data=data,
                      next_url=_next(keep, "after", data["next_after"]))  # fmt: skip

    def jobs(self, request: Request) -> Response:
        data = api.jobs(self.console, request.query_params)
        keep = {k: v for k, v in request.query_params.items() if k not in ("before", "partial")}
        return self.render(request, "jobs.html", page="jobs", data=data, states=views.STATES,
                      next_url=_next(keep, "before", data["next_before"]))  # fmt: skip

    def job(self, request: Request) -> Response:
        data = api.job(self.console, int(request.path_params["job_id"]))
        return self.render(request, "job.html", page="jobs", job=data)

    def job_log(self, request: Request) -> Response:
        piece = api._log(self.console, request)
        return PlainTextResponse(
            piece["text"],
            headers={"X-Log-Offset": str(piece["offset"]), "X-Job-State": piece["state"]},
        )

    def models(self, request: Request) -> Response:
        return self.render(request, "models.html", page="models", data=api.models(self.console))

    def audit(self, request: Request) -> Response:
        force = request.query_params.get("verify") == "1"
        return self.render(request, "audit.html", page="audit",
                      chains=api.audit_chains(self.console, force=force),
                      actions=views.operator_lines(self.console.config, 50))  # fmt: skip

    def download(self, request: Request) -> Response:
        wanted = request.path_params["chain"]
        found = dict(chains(self.console.config.audit_dir)).get(wanted)
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

    def action(self, what: str, act: Any, describe: Any, back: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            form = await self.checked_form(request)
            if form.get("confirm") != "yes":
                return self.render(request, "confirm.html", page="", what=what,
                              question=describe(request), action=request.url.path,
                              back=back(request))  # fmt: skip
            message = act(request)
            self.console.flashes[self.session_of(request).id] = message
            return RedirectResponse(back(request), status_code=303)

        return endpoint

    def job_no(self, request: Request) -> int:
        return int(request.path_params["job_id"])

    def routes(self) -> list[Route]:
        return [
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/", self.overview),
            Route("/deliveries", self.deliveries),
            Route("/jobs", self.jobs),
            Route("/jobs/{job_id:int}", self.job),
            Route("/jobs/{job_id:int}/log", self.job_log),
            Route("/models", self.models),
            Route("/audit", self.audit),
            Route("/audit/{chain}/download", self.download),
            Route("/jobs/{job_id:int}/retry", self.action(
                "Retry", lambda r: api.retry(self.console, r, self.job_no(r)),
                lambda r: f"Queue job {self.job_no(r)} again?",
                lambda r: f"/jobs/{self.job_no(r)}"),
                methods=["POST"]),
            Route("/jobs/{job_id:int}/cancel", self.action(
                "Cancel", lambda r: api.cancel(self.console, r, self.job_no(r)),
                lambda r: f"Cancel job {self.job_no(r)}?",
                lambda r: f"/jobs/{self.job_no(r)}"),
                methods=["POST"]),
            Route("/jobs/retry-failed", self.action(
                "Retry all failed", lambda r: api.retry_failed(self.console, r),
                lambda r: "Queue the failed jobs again "
                f"(the newest {api.RETRY_ALL_LIMIT} at most)?",
                lambda r: "/jobs?state=failed"), methods=["POST"]),
            Route("/models/{name}/activate", self.action(
                "Make active", lambda r: api.activate(self.console, r, r.path_params["name"]),
                lambda r: f"Make model {r.path_params['name']} the active model?",
                lambda r: "/models"), methods=["POST"]),
        ]  # fmt: skip


def _local(target: str) -> str:
    """Only a path on this console (never //host or a scheme): no open redirect."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _next(keep: dict[str, str], key: str, value: Any) -> str | None:
    return None if value is None else "?" + urlencode({**keep, key: value})
