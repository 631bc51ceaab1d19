"""The receiver's fast path for refusals (answered in the protocol, keep-alive intact) and
`server.workers` > 1: several receiver processes on one port (each its own
SO_REUSEPORT socket), supervised."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgehook.template import sample_body
from tests.conftest import (
    Server,
    Workspace,
    free_port,
    run_edgehook,
    signed,
    start_server,
    stop_server,
)

FORGED = {"content-type": "application/json", "authorization": "Bearer " + "f" * 40}


@pytest.fixture
def server(workspace: Workspace) -> Iterator[Server]:
    running = start_server(workspace, free_port())
    yield running
    stop_server(running)


def _connection(server: Server) -> http.client.HTTPConnection:
    host, port = server.url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=10)


def test_refusals_on_one_kept_alive_connection_then_a_delivery(
    server: Server, workspace: Workspace
) -> None:
    """A refused request's body is read and dropped, the connection stays usable, and a
    genuine delivery on it afterwards goes through the whole pipeline."""
    conn = _connection(server)
    for _ in range(3):
        conn.request("POST", "/webhook", b'{"a": 1}' * 100, FORGED)
        answer = conn.getresponse()
        assert (answer.status, answer.read()) == (401, b'{"error":"unauthorized"}')
        assert answer.getheader("www-authenticate") and answer.getheader("x-request-id")
        assert answer.getheader("connection") is None  # kept alive
    body = sample_body(event_author="kept-alive")
    conn.request("POST", "/webhook", body, signed(workspace, body))
    answer = conn.getresponse()
    assert answer.status == 202 and json.loads(answer.read())["status"] == "accepted"
    conn.request("GET", "/nope")
    answer = conn.getresponse()
    assert answer.status == 404 and answer.read()
    conn.close()


def test_a_client_that_expects_100_continue_gets_the_refusal_and_a_close(server: Server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert b"\r\nconnection: close\r\n" in data and data.endswith(b'{"error":"unauthorized"}')


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_two_receiver_processes_share_the_port_the_store_and_the_duplicate_check(
    workspace: Workspace,
) -> None:
    workspace.edit("[server]", "[server]\nworkers = 2")
    running = start_server(workspace, free_port())
    try:
        receivers = _children(running.process.pid)
        assert len(receivers) == 2
        host, port = running.url.removeprefix("http://").split(":")
        jobs = []
        for i in range(12):  # a new connection each, as W&B sends: spread over both
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            body = sample_body(event_author=f"p{i}")
            conn.request("POST", "/webhook", body, signed(workspace, body))
            answer = conn.getresponse()
            assert answer.status == 202
            jobs.append(json.loads(answer.read())["job_id"])
            conn.close()
        assert len(set(jobs)) == 12
        body = sample_body(event_author="twice")
        answers = []
        for _ in range(4):
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("POST", "/webhook", body, signed(workspace, body))
            answers.append(json.loads(conn.getresponse().read()))
            conn.close()
        assert answers[0]["status"] == "accepted"
        assert answers[1:] == [{"status": "duplicate", "job_id": answers[0]["job_id"]}] * 3
        os.kill(receivers[0], signal.SIGKILL)  # one receiver dies: the supervisor starts another
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (
            len(found := _children(running.process.pid)) != 2 or receivers[0] in found
        ):
            time.sleep(0.1)
        assert len(found) == 2 and receivers[0] not in found
    finally:
        stop_server(running)
    assert running.process.returncode == 0
    for pid in [*receivers, *found]:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
    verified = run_edgehook("audit", "verify", config=workspace.config_path, cwd=workspace.dir)
    assert verified.returncode == 0, verified.stdout
    assert "receiver: ok" in verified.stdout and "receiver-1: ok" in verified.stdout
    shown = run_edgehook("audit", "show", config=workspace.config_path, cwd=workspace.dir)
    assert shown.stdout.count(" 202 ") == 13  # each accepted delivery once, in either chain
