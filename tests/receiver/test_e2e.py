"""The receiver as a real process on a loopback port, driven the way W&B and users drive it."""

import json
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator

import pytest

from edgehook.template import sample_body
from tests.conftest import Server, Workspace, free_port, run_edgehook, start_server, stop_server

pytestmark = pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("openssl")),
    reason="needs curl and openssl (scripts/test.sh installs them)",
)


@pytest.fixture
def server(workspace: Workspace) -> Iterator[Server]:
    running = start_server(workspace, free_port())
    yield running
    stop_server(running)


def wandb_troubleshooting_request(
    url: str, payload: str, token: str, secret: str
) -> tuple[int, dict[str, str], str]:
    """W&B's documented script: openssl HMAC -> base64, then curl with its headers."""
    script = r"""
    SIG=$(printf %s "$PAYLOAD" | openssl dgst -sha256 -hmac "$SECRET" -binary | base64)
    curl -sS -i -X POST "$URL" \
      -H "Content-Type: application/json" \
      -H "Authorization: Bearer $TOKEN" \
      -H "X-Wandb-Signature: $SIG" \
      -d "$PAYLOAD"
    """
    result = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={
            "PAYLOAD": payload,
            "SECRET": secret,
            "TOKEN": token,
            "URL": url,
            "PATH": "/usr/bin:/bin",
        },
    )
    head, _, body = result.stdout.partition("\n\n")  # text mode has turned CRLF into LF
    status_line, *header_lines = head.split("\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


def test_wandb_style_delivery_is_accepted_and_committed(
    server: Server, workspace: Workspace
) -> None:
    payload = sample_body().decode()
    status, headers, body = wandb_troubleshooting_request(
        f"{server.url}/webhook", payload, workspace.access_token, workspace.signing_secret
    )
    assert status == 202, body
    assert json.loads(body) == {"status": "accepted", "job_id": 1}
    assert "server" not in headers  # no banner
    with sqlite3.connect(workspace.dir / "data" / "edgehook.db") as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
    status, _, body = wandb_troubleshooting_request(
        f"{server.url}/webhook", payload, workspace.access_token, "wrong-secret-" * 3
    )
    assert status == 401 and json.loads(body) == {"error": "unauthorized"}


def test_send_test_and_audit_commands_against_the_running_server(
    server: Server, workspace: Workspace
) -> None:
    def edgehook(*args: str) -> subprocess.CompletedProcess[str]:
        return run_edgehook(*args, cwd=workspace.dir, config=workspace.config_path)

    sent = edgehook("send-test", f"{server.url}/webhook")
    assert sent.returncode == 0, sent.stderr
    assert "202" in sent.stdout and '"job_id":1' in sent.stdout
    again = edgehook("send-test", f"{server.url}/webhook")
    assert again.returncode == 0 and "duplicate" in again.stdout
    shown = edgehook("audit", "show", "--decision", "accepted", "--json")
    lines = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [line["job_id"] for line in lines] == [1]
    verified = edgehook("audit", "verify")
    assert verified.returncode == 0 and verified.stdout.startswith("receiver: ok:")


def test_errors_never_carry_stack_traces(server: Server) -> None:
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-i",
            "-X",
            "POST",
            f"{server.url}/webhook",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "[[[[",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "401" in result.stdout.splitlines()[0]
    assert "Traceback" not in result.stdout
    missing = subprocess.run(["curl", "-sS", f"{server.url}/docs"], capture_output=True, text=True)
    assert json.loads(missing.stdout) == {"error": "not_found", "detail": "not_found"}


def test_oversize_headers_are_refused_without_harm(server: Server) -> None:
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            f"{server.url}/healthz",
            "-H",
            "X-Pad: " + "a" * 40_000,
        ],
        capture_output=True,
        text=True,
    )
    assert result.stdout == "431"
    ok = subprocess.run(["curl", "-sS", f"{server.url}/healthz"], capture_output=True, text=True)
    assert json.loads(ok.stdout) == {"status": "ok"}


def test_slow_header_trickle_is_cut_off(workspace: Workspace) -> None:
    workspace.edit("port = 8090", "port = 8090\nheader_timeout_s = 0.5")
    running = start_server(workspace, free_port())
    try:
        host, port = running.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            reply = sock.recv(1024)
        assert reply.startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started < 3
    finally:
        stop_server(running)
