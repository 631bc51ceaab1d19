"""receiver/protocol.py against a real `edgehook serve`: refusals on the fast path keep the
connection usable (their bodies read past, answers in request order), and the connection
then carries a genuine delivery like any other."""

from __future__ import annotations

import http.client
import re
import socket
from collections.abc import Iterator

import pytest

from edgehook.template import sample_body
from tests.conftest import Server, Workspace, free_port, signed, start_server, stop_server


@pytest.fixture
def server(workspace: Workspace) -> Iterator[Server]:
    server = start_server(workspace, free_port())
    yield server
    stop_server(server)


def test_refusals_and_a_delivery_share_one_keep_alive_connection(
    workspace: Workspace, server: Server
) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    statuses = []
    try:
        body = sample_body()
        forged = signed(workspace, body, authorization="Bearer wrong")
        for _ in range(3):
            conn.request("POST", "/webhook", body=body, headers=forged)
            reply = conn.getresponse()
            assert reply.read() == b'{"error":"unauthorized"}'
            statuses.append(reply.status)
        first_socket = conn.sock
        conn.request("POST", "/webhook", body=body, headers=signed(workspace, body))
        reply = conn.getresponse()
        reply.read()
        statuses.append(reply.status)
        assert conn.sock is first_socket  # the same connection throughout
    finally:
        conn.close()
    assert statuses == [401, 401, 401, 202]


def test_pipelined_requests_are_answered_in_order(workspace: Workspace, server: Server) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    body = sample_body(event_author="pipelined")

    def request(headers: dict[str, str]) -> bytes:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return (
            f"POST /webhook HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    genuine = request(signed(workspace, body))
    forged = request(signed(workspace, body, authorization="Bearer wrong"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(genuine + forged + genuine)
        received = b""
        while received.count(b"HTTP/1.1 ") < 3:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", received)
    assert statuses == [b"202", b"401", b"200"]  # the last: a duplicate of the first
