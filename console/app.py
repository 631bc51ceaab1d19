"""The console's ASGI app, built in one place: the security layers read top to bottom.

SecurityHeaders  every answer: a CSP with no inline script and no other origin, no framing,
                 no sniffing, no caching
Gate             the one permission question (`allowed`): /api/* and /metrics need the
                 bearer token (401 otherwise, whatever the method); pages need a session
                 (a login form otherwise); /login and /static are open
routes           pages (pages.py), their JSON twins (api.py), /metrics (metrics.py)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from console import api, pages
from console.auth import SESSION_COOKIE, LoginLimiter, Session, Sessions, bearer, token_matches
from console.deliveryindex import DeliveryIndex
from console.health import Health
from console.metrics import Metrics
from core.auditread import Report, chains, verify
from core.config import Config

HERE = Path(__file__).parent
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
VERIFY_EVERY_S = 600.0


@dataclass
class Console:
    """What the endpoints share: settings, secrets, the caches, the clock."""

    config: Config
    token: bytes
    audit_key: bytes
    index: DeliveryIndex
    clock: Callable[[], float] = time.time
    sessions: Sessions = field(init=False)
    limiter: LoginLimiter = field(init=False)
    health: Health = field(init=False)
    # verify(directory, key); server.py runs it in a child process, so verifying a long
    # chain (seconds of CPU) never holds this process's GIL while pages are served
    verifier: Callable[[Path, bytes], Report] = verify
    flashes: dict[str, str] = field(default_factory=dict)
    _verified: dict[str, tuple[float, Report]] = field(default_factory=dict)
    _verify_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.config.console.session_hours * 3600)
        self.limiter = LoginLimiter(self.config.console.login_attempts_per_minute)
        self.health = Health(self.config)

    def chain_reports(
        self, *, force: bool = False, cached_only: bool = False
    ) -> list[tuple[str, float, Report]]:
        """Each chain's verify result, recomputed when older than VERIFY_EVERY_S. A chain of a
        million lines takes seconds to verify, so the overview reads only what the
        background thread (server.py) or /audit computed."""
        if cached_only:
            return [(name, *found) for name, found in sorted(self._verified.items())]
        out = []
        with self._verify_lock:
            for name, path in chains(self.config.audit_dir):
                cached = self._verified.get(name)
                if force or cached is None or self.clock() - cached[0] > VERIFY_EVERY_S:
                    cached = self._verified[name] = (
                        self.clock(),
                        self.verifier(path, self.audit_key),
                    )
                out.append((name, *cached))
        return out


def allowed(console: Console, conn: HTTPConnection) -> Session | str | None:
    """The one permission question: a page session, "token" for a valid bearer token, or
    None. The API and /metrics accept only the token, pages only a session."""
    path = conn.url.path
    if path.startswith("/api/") or path == "/metrics":
        offered = bearer(conn.headers.get("authorization"))
        return "token" if token_matches(console.token, offered) else None
    return console.sessions.get(conn.cookies.get(SESSION_COOKIE), console.clock())


OPEN = ("/login", "/static/")


class Gate:
    def __init__(self, app: ASGIApp, console: Console) -> None:
        self.app = app
        self.console = console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(OPEN):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        who = allowed(self.console, conn)
        if who is not None:
            scope["console.who"] = who
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path.startswith("/api/") or path == "/metrics":
            response: Response = JSONResponse(
                {"error": "unauthorized", "detail": "send Authorization: Bearer <console token>"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="edgehook-console"'},
            )
        elif scope["method"] in ("GET", "HEAD"):
            response = RedirectResponse(f"/login?next={_safe_next(conn)}", status_code=303)
        else:
            response = JSONResponse({"error": "unauthorized", "detail": "log in"}, 401)
        await response(scope, receive, send)


def _safe_next(conn: HTTPConnection) -> str:
    from urllib.parse import quote

    return quote(conn.url.path, safe="/")


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = Headers(raw=message.get("headers", []))
                extra = [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                if "cache-control" not in headers:
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


def templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters["when"] = pages.when
    env.filters["ago"] = pages.ago
    env.filters["dash"] = lambda value: "-" if value is None else value
    return env


def build_app(console: Console) -> ASGIApp:
    env = templates()
    metrics = Metrics(console)
    routes = [
        *pages.Pages(console, env).routes(),
        *api.routes(console),
        *metrics.routes(),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers=api.handlers(env))
    return SecurityHeaders(Gate(app, console))
