"""Fault matrix: slow and greedy clients against a real receiver.

A body trickled byte by byte is cut off with 408. A flood of idle sockets, slow heads and
trickling bodies, past the connection table or not, never shuts a genuine delivery out:
it is answered 202 within 2 s, the receiver's memory stays bounded, and every connection
refused below the app (evicted, over capacity, head timeout, head too large, unparsable)
is accounted for in the audit log, one line each or counted in a flood summary."""

from __future__ import annotations

import contextlib
import http.client
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.auditread import records
from edgehook.template import sample_body
from tests.conftest import (
    Server,
    Workspace,
    free_port,
    signed,
    start_server,
    stop_server,
    wait_for,
)


def serve_with(workspace: Workspace, server_settings: str) -> Server:
    workspace.edit("requests_per_second = 5.0", "requests_per_second = 1000.0")
    workspace.edit("burst = 30", "burst = 1000")
    text = workspace.config_path.read_text().replace(
        "port = 8090", f"port = 8090\n{server_settings}"
    )
    workspace.config_path.write_text(text)
    return start_server(workspace, free_port())


@pytest.fixture
def server(workspace: Workspace) -> Iterator[Server]:
    server = serve_with(workspace, "header_timeout_s = 2\nbody_timeout_s = 2")
    yield server
    stop_server(server)


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def deliver(workspace: Workspace, server: Server, tag: str) -> tuple[int, float]:
    """A genuine delivery: (status, seconds until the answer)."""
    body = sample_body(event_author=tag)
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=10)
    try:
        conn.request("POST", "/webhook", body=body, headers=signed(workspace, body))
        reply = conn.getresponse()
        reply.read()
        return reply.status, time.monotonic() - started
    finally:
        conn.close()


def refusals(workspace: Workspace) -> Counter[str]:
    """'status reason' -> how many, from single lines and flood summaries together."""
    counted: Counter[str] = Counter()
    for record in records(workspace.dir / "data" / "audit"):
        if record["kind"] == "request" and record["decision"] == "rejected":
            counted[f"{record['status']} {record['reason']}"] += 1
        elif record["kind"] == "summary":
            counted.update(record["by_reason"])
    return counted


def read_by_receiver(sock: socket.socket) -> bool:
    """Whether the receiver has read everything this client sent: nothing waits in either
    end of the loopback connection (/proc/net/tcp), so the request is in the receiver's hands."""
    ours, theirs = _proc_address(sock.getsockname()), _proc_address(sock.getpeername())
    queued = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == (ours, theirs):
            queued["sending"] = int(fields[4].split(":")[0], 16)
        elif (fields[1], fields[2]) == (theirs, ours):
            queued["unread"] = int(fields[4].split(":")[1], 16)
    assert len(queued) == 2, f"the connection is not in /proc/net/tcp: {queued}"
    return queued == {"sending": 0, "unread": 0}


def _proc_address(address: tuple[str, int]) -> str:
    """An IPv4 address as /proc/net/tcp writes it: the address bytes as a host-order
    integer, then the port, both in hex."""
    host, port = address
    return f"{int.from_bytes(socket.inet_aton(host), sys.byteorder):08X}:{port:04X}"


def trickle_head(token: str) -> bytes:
    """A complete head announcing 900 bytes of body, and the body's first byte."""
    return (
        b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {token}\r\nContent-Length: 900\r\n\r\n{{".encode()
    )


def open_hogs(server: Server, count: int, token: str) -> list[socket.socket]:
    """Idle sockets, slow heads that never end, and bodies trickled after a head: a third each."""
    hogs = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=5)
        if i % 3 == 1:
            sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\n")
        elif i % 3 == 2:
            sock.sendall(trickle_head(token))
        hogs.append(sock)
    return hogs


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
    sock.settimeout(1.0)  # one byte a second at most: far slower than body_timeout_s
    try:
        for byte in body[5:40]:
            sock.sendall(bytes([byte]))
            try:  # between bytes, wait for the receiver's answer rather than a fixed pause
                answer = sock.recv(4096)
                break
            except TimeoutError:
                if time.monotonic() - started > 6:
                    break
    except OSError:
        pass  # the receiver hung up on us
    if not answer:
        sock.settimeout(2.0)
        with contextlib.suppress(OSError):
            answer = sock.recv(4096)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert time.monotonic() - started < 8
    assert deliver(workspace, server, "after-trickle")[0] == 202


def test_1200_idle_slow_and_trickling_connections_do_not_shut_a_delivery_out(
    workspace: Workspace,
) -> None:
    # Default capacity and timeouts: the hogs are all held while the deliveries arrive.
    # Half the trickling bodies carry the right token, so they hold a request slot each.
    server = serve_with(workspace, "")
    try:
        hogs = open_hogs(server, 600, "wrong") + open_hogs(server, 600, workspace.access_token)
        try:
            answers = [deliver(workspace, server, f"genuine{i}") for i in range(5)]
            rss_mb = rss_kib(server.process.pid) / 1024
        finally:
            for sock in hogs:
                sock.close()
        assert [status for status, _ in answers] == [202] * 5
        assert max(seconds for _, seconds in answers) < 2.0, answers
        assert rss_mb < 80, rss_mb
        assert server.process.poll() is None
    finally:
        stop_server(server)


def test_past_the_connection_table_the_oldest_waiting_connection_makes_room(
    workspace: Workspace,
) -> None:
    server = serve_with(workspace, "max_connections = 32")
    try:
        hogs = open_hogs(server, 200, "wrong")
        try:
            status, seconds = deliver(workspace, server, "through-the-flood")
        finally:
            for sock in hogs:
                sock.close()
        assert status == 202 and seconds < 2.0
    finally:
        stop_server(server)
    # 201 connections, 32 places: each of the last 169 took the place of a waiting one, and
    # each eviction is in the audit log (its own line or a summary's count).
    assert refusals(workspace)["408 idle_evicted"] == 169


def test_when_every_place_holds_a_request_a_new_connection_gets_503_and_an_audit_line(
    workspace: Workspace,
) -> None:
    server = serve_with(workspace, "max_connections = 8\nbody_timeout_s = 10")
    token = workspace.access_token
    head = trickle_head(token)
    busy = []
    try:
        for _ in range(8):  # right token, body never finished: busy, not evictable
            sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=5)
            sock.sendall(head)
            busy.append(sock)
        # every place taken: the receiver has read each head
        wait_for(lambda: all(map(read_by_receiver, busy)), timeout=10, what="for the heads")
        sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=5)
        answer = sock.recv(4096)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer[:80]
    finally:
        for hog in busy:
            hog.close()
        stop_server(server)
    assert refusals(workspace)["503 over_capacity"] >= 1


def test_head_refusals_below_the_app_are_audited(workspace: Workspace, server: Server) -> None:
    def exchange(data: bytes) -> bytes:
        sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=5)
        try:
            sock.sendall(data)
            return sock.recv(4096)
        finally:
            sock.close()

    assert exchange(b"NONSENSE\x00 / HTTP/9\r\n\r\n").startswith(b"HTTP/1.1 400")
    big = b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    assert exchange(big).startswith(b"HTTP/1.1 431")
    assert exchange(b"POST /webhook HTTP/1.1\r\n").startswith(b"HTTP/1.1 408")  # 2 s later
    stop_server(server)
    counted = refusals(workspace)
    assert (counted["400 bad_request"], counted["431 head_too_large"]) == (1, 1)
    assert counted["408 head_timeout"] == 1


def test_a_client_that_leaves_mid_body_is_client_disconnected_without_a_traceback(
    workspace: Workspace, server: Server
) -> None:
    sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=5)
    sock.sendall(trickle_head(workspace.access_token))
    wait_for(lambda: read_by_receiver(sock), timeout=10, what="for the head to be read")
    sock.close()
    assert deliver(workspace, server, "after-the-leaver")[0] == 202
    stop_server(server)
    lines = [r for r in records(workspace.dir / "data" / "audit") if r["kind"] == "request"]
    left = [(r["status"], r["reason"]) for r in lines if r["method"] == "POST"]
    assert left == [(499, "client_disconnected"), (202, "queued")]
    assert "Traceback" not in server.log.read_text()
