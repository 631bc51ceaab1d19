"""receiver/fastpath.py: a right-token request's body is read and its signature checked in
the HTTP protocol, before any ASGI app; the answers and audit lines are the app's own.

The in-process tests run the real protocol under uvicorn with a stand-in app that counts
what reaches it; the others drive a real `edgehook serve` over raw sockets."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from core.auditread import records
from edgehook.template import sample_body
from receiver.fastpath import FastPath, ProvingBody
from receiver.gate import Gate
from receiver.protocol import bounded_protocol
from receiver.server import make_services
from tests.conftest import Server, Workspace, free_port, signed, start_server, stop_server

BAD_SIGNATURE = "A" * 43 + "="


def request(body: bytes, headers: dict[str, str], version: str = "1.1") -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST /webhook HTTP/{version}\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def exchange(port: int, data: bytes, answers: int) -> list[tuple[int, bytes]]:
    """Send `data`, read until `answers` answers (or the server closes): (status, body)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        while len(re.findall(rb"HTTP/1\.1 [2-5]\d\d ", received)) < answers:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    found = []
    for part in re.split(rb"(?=HTTP/1\.1 \d{3} )", received)[1:]:
        head, _, rest = part.partition(b"\r\n\r\n")
        length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
        status = int(part[9:12])
        found.append((status, rest[: int(length.group(1))] if length else b""))
    return found


class Counted:
    """A stand-in Starlette app behind the real Gate: counts the requests it is given."""

    def __init__(self) -> None:
        self.seen = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.seen += 1
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        reply = b"reached with %d bytes" % len(body)
        length = (b"content-length", str(len(reply)).encode())
        await send({"type": "http.response.start", "status": 202, "headers": [length]})
        await send({"type": "http.response.body", "body": reply})


@pytest.fixture
def in_process(workspace: Workspace) -> Iterator[tuple[int, Counted]]:
    services = make_services(workspace.config(), {})
    app = Counted()
    port = free_port()
    config = uvicorn.Config(
        Gate(app, services),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        http=bounded_protocol(16384, 5.0, early=FastPath(services)),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:  # set by the server once it listens
        assert thread.is_alive()
        threading.Event().wait(0.01)
    yield port, app
    server.should_exit = True
    thread.join(10)
    services.audit.close()


def test_forgeries_with_the_right_token_never_reach_the_app(
    workspace: Workspace, in_process: tuple[int, Counted]
) -> None:
    port, app = in_process
    body = sample_body(event_author="fast")
    bad = request(body, signed(workspace, body, **{"x-wandb-signature": BAD_SIGNATURE}))
    none = signed(workspace, body)
    del none["x-wandb-signature"]
    answers = exchange(port, bad + request(body, none) + bad, 3)
    assert answers == [(401, b'{"error":"unauthorized"}')] * 3
    assert app.seen == 0
    # A genuine delivery proves itself in the protocol and is handed on, body and all.
    reached = exchange(port, request(body, signed(workspace, body)), 1)
    assert reached == [(202, b"reached with %d bytes" % len(body))]
    assert app.seen == 1


def test_the_verdicts_are_the_apps(workspace: Workspace) -> None:
    services = make_services(workspace.config(), {})
    fast = FastPath(services)
    body = sample_body()
    headers = [(k.encode(), v.encode()) for k, v in signed(workspace, body).items()]
    scope: dict[str, Any] = {}
    pending = fast("POST", "/webhook", headers, "127.0.0.1", scope, False)
    assert isinstance(pending, ProvingBody)
    assert pending.complete(body, False) is None
    assert scope["edgehook"].authenticated is True
    forged = fast("POST", "/webhook", headers, "127.0.0.1", {}, False)
    assert isinstance(forged, ProvingBody)
    answer = forged.complete(body + b" ", True)
    assert answer is not None and answer.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert answer.endswith(b'connection: close\r\n\r\n{"error":"unauthorized"}')
    assert fast("GET", "/healthz", [], "127.0.0.1", {}, False) is None
    services.audit.close()


@pytest.fixture
def server(workspace: Workspace) -> Iterator[Server]:
    workspace.edit("port = 8090", "port = 8090\nmax_body_bytes = 2048")
    server = start_server(workspace, free_port())
    yield server
    stop_server(server)


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def test_each_refusal_keeps_its_status_reason_and_audit_line(
    workspace: Workspace, server: Server
) -> None:
    body = sample_body(event_author="audited")
    forged = signed(workspace, body, **{"x-wandb-signature": BAD_SIGNATURE})
    missing = signed(workspace, body)
    del missing["x-wandb-signature"]
    stranger = signed(workspace, body, authorization="Bearer wrong")
    one_connection = request(body, forged) + request(body, missing) + request(body, stranger)
    assert [status for status, _ in exchange(port_of(server), one_connection, 3)] == [401] * 3
    genuine = request(body, signed(workspace, body), version="1.0")  # then closed
    assert [status for status, _ in exchange(port_of(server), genuine, 1)] == [202]
    stop_server(server)
    lines = [r for r in records(workspace.dir / "data" / "audit") if r["kind"] == "request"]
    posts = [(r["status"], r["reason"], "body_sha256" in r) for r in lines if r["method"] == "POST"]
    assert posts == [
        (401, "bad_signature", True),
        (401, "missing_signature", True),
        (401, "bad_token", False),
        (202, "queued", True),
    ]


def test_an_oversized_chunked_body_with_the_right_token_is_413_and_closed(
    workspace: Workspace, server: Server
) -> None:
    headers = signed(workspace, b"x")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    chunk = b"{" + b" " * 3000
    data = (
        f"POST /webhook HTTP/1.1\r\nHost: x\r\n{head}Transfer-Encoding: chunked\r\n\r\n".encode()
        + f"{len(chunk):x}\r\n".encode()
        + chunk
        + b"\r\n0\r\n\r\n"
    )
    answers = exchange(port_of(server), data, 1)
    assert answers == [(413, b'{"error":"too_large","detail":"body is larger than 2048 bytes"}')]


def test_expect_100_continue_with_the_right_token_is_continued_then_judged(
    workspace: Workspace, server: Server
) -> None:
    body = sample_body(event_author="continued")
    head = request(b"", {**signed(workspace, body), "Expect": "100-continue"})
    head = head.replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode())
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=10) as sock:
        sock.sendall(head)
        assert sock.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = b""
        while b'"status":"accepted"' not in answer:
            chunk = sock.recv(4096)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 202 ")
    assert answer.count(b"100 Continue") == 0  # asked for once, not again by the app
