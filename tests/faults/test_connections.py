"""Fault matrix: slow and greedy clients against a real receiver. A body trickled byte by
byte is cut off with 408; more idle or trickling connections than server.max_connections
are bounded (refused or timed out) and a legitimate delivery still gets through within the
header timeout, without the receiver's memory growing."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver.template import sample_body
from tests.conftest import Server, Workspace, free_port, signed, start_server, stop_server


@pytest.fixture
def server(workspace: Workspace) -> Iterator[Server]:
    workspace.edit("requests_per_second = 5.0", "requests_per_second = 1000.0")
    workspace.edit("burst = 30", "burst = 1000")
    text = workspace.config_path.read_text().replace(
        "port = 8090",
        "port = 8090\nheader_timeout_s = 2\nbody_timeout_s = 2\nmax_connections = 32",
    )
    workspace.config_path.write_text(text)
    server = start_server(workspace, free_port())
    yield server
    stop_server(server)


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def deliver(workspace: Workspace, server: Server, tag: str) -> int:
    body = sample_body(event_author=tag)
    conn = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=10)
    try:
        conn.request("POST", "/webhook", body=body, headers=signed(workspace, body))
        reply = conn.getresponse()
        reply.read()
        return reply.status
    finally:
        conn.close()


def test_a_trickled_body_gets_408(workspace: Workspace, server: Server) -> None:
    body = sample_body()
    headers = signed(workspace, body)
    sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=10)
    head = "POST /webhook HTTP/1.1\r\nHost: x\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[:5])
    started = time.monotonic()
    answer = b""
    try:
        for byte in body[5:40]:  # one byte a second: far slower than body_timeout_s
            sock.sendall(bytes([byte]))
            time.sleep(1.0)
            if time.monotonic() - started > 6:
                break
    except OSError:
        pass  # the receiver hung up on us
    with contextlib.suppress(OSError):
        answer = sock.recv(4096)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert time.monotonic() - started < 8
    assert deliver(workspace, server, "after-trickle") == 202


def test_more_connections_than_the_limit_are_bounded_and_deliveries_still_served(
    workspace: Workspace, server: Server
) -> None:
    before = rss_kib(server.process.pid)
    hogs = []
    for i in range(200):  # idle and trickling connections, far past max_connections = 32
        try:
            sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=5)
        except OSError:
            continue
        if i % 2:
            sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
        hogs.append(sock)
    try:
        served = None
        deadline = time.monotonic() + 8  # header_timeout_s = 2 frees the slots
        statuses: list[int] = []
        while time.monotonic() < deadline:
            status = deliver(workspace, server, f"legit{len(statuses)}")
            statuses.append(status)
            if status == 202:
                served = time.monotonic()
                break
            assert status == 503, statuses  # refused while full, never a 5xx crash
            time.sleep(0.2)
        assert served is not None, statuses
        assert server.process.poll() is None
        assert rss_kib(server.process.pid) - before < 20 * 1024  # bounded: < 20 MiB growth
    finally:
        for sock in hogs:
            sock.close()
    assert deliver(workspace, server, "after-hogs") == 202
    audit = json.dumps([p.name for p in (workspace.dir / "data" / "audit").iterdir()])
    assert "audit-" in audit
