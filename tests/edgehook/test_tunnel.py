"""The tunnel command against fake `cloudflared` and `ngrok` executables that behave like the
real ones' interfaces (cloudflared's quick-tunnel banner; ngrok's log lines and local API, as
pyngrok drives them). The tunnel logic itself is real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    ROOT,
    Server,
    Workspace,
    free_port,
    run_edgehook,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.slow  # fake tunnel providers started for real

FAKES = ROOT / "tests" / "fakes" / "bin"


@pytest.fixture
def receiver(workspace: Workspace) -> Iterator[Server]:
    port = free_port()
    workspace.edit("port = 8090", f"port = {port}")
    server = start_server(workspace, port)
    yield server
    stop_server(server)


def open_tunnel(
    workspace: Workspace, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], list[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "edgehook", "--config", str(workspace.config_path), "tunnel", *args],
        cwd=workspace.dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines: list[str] = []
    deadline = time.monotonic() + 60
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("Ctrl-C"):
            return process, lines
    process.kill()
    raise AssertionError("\n".join(lines))


def close(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=30)
    assert process.stdout is not None
    process.stdout.close()
    return code


def check_tunnel(
    workspace: Workspace, process: subprocess.Popen[str], lines: list[str], provider: str
) -> None:
    up = next(line for line in lines if line.startswith("Tunnel up"))
    url = up.split(": ", 1)[1]
    state = json.loads((workspace.dir / "data" / "tunnel.json").read_text())
    assert state["provider"] == provider and state["webhook_url"] == f"{url}/webhook"
    assert any(line.strip() == f"URL           {url}/webhook" for line in lines)
    assert any("${event_type}" in line for line in lines)
    sent = run_edgehook(
        "send-test", f"{url}/webhook", cwd=workspace.dir, config=workspace.config_path
    )
    assert sent.returncode == 0 and "202" in sent.stdout, sent.stdout + sent.stderr
    doctor = run_edgehook("doctor", cwd=workspace.dir, config=workspace.config_path)
    assert "PASS  tunnel" in doctor.stdout
    assert close(process) == 0
    assert not (workspace.dir / "data" / "tunnel.json").exists()


def test_cloudflared_quick_tunnel(workspace: Workspace, receiver: Server) -> None:
    workspace.edit(
        "[rate_limit]", f'[tunnel]\ncloudflared_path = "{FAKES / "cloudflared"}"\n\n[rate_limit]'
    )
    process, lines = open_tunnel(workspace)
    assert any("URL changes every time" in line for line in lines)
    check_tunnel(workspace, process, lines, "cloudflared")


@pytest.mark.parametrize("through", ["variable", "file"])
def test_ngrok_through_pyngrok(workspace: Workspace, receiver: Server, through: str) -> None:
    pytest.importorskip("pyngrok")
    workspace.edit(
        "[rate_limit]",
        f'[tunnel]\nprovider = "ngrok"\nngrok_path = "{FAKES / "ngrok"}"\n\n[rate_limit]',
    )
    token = "fake-token-" + "x" * 20
    env = {"NGROK_AUTHTOKEN": token}
    if through == "file":  # as systemd's LoadCredential or a Docker secret hands it over
        path = workspace.dir / "ngrok_token"
        path.write_text(token + "\n")
        path.chmod(0o400)
        env = {"NGROK_AUTHTOKEN": "", "NGROK_AUTHTOKEN_FILE": str(path)}
    process, lines = open_tunnel(workspace, env=env)
    check_tunnel(workspace, process, lines, "ngrok")


def test_a_token_file_others_can_read_is_refused(workspace: Workspace, receiver: Server) -> None:
    workspace.edit(
        "[rate_limit]",
        f'[tunnel]\nprovider = "ngrok"\nngrok_path = "{FAKES / "ngrok"}"\n\n[rate_limit]',
    )
    path = workspace.dir / "ngrok_token"
    path.write_text("t" * 30)
    path.chmod(0o644)
    result = run_edgehook(
        "tunnel",
        cwd=workspace.dir,
        config=workspace.config_path,
        env={**os.environ, "NGROK_AUTHTOKEN": "", "NGROK_AUTHTOKEN_FILE": str(path)},
        timeout=60,
    )
    assert result.returncode == 2
    assert "NGROK_AUTHTOKEN_FILE" in result.stderr and "chmod 600" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_start_tunnel_script_takes_the_provider(workspace: Workspace, receiver: Server) -> None:
    workspace.edit(
        "[rate_limit]", f'[tunnel]\ncloudflared_path = "{FAKES / "cloudflared"}"\n\n[rate_limit]'
    )
    process = subprocess.Popen(
        [str(ROOT / "scripts" / "start_tunnel.sh"), "cloudflared"],
        cwd=workspace.dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **os.environ,
            "EDGEHOOK": str(Path(sys.executable).parent / "edgehook"),
            "EDGEHOOK_CONFIG": str(workspace.config_path),
        },
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    assert first.startswith("Tunnel up (cloudflared)")
    assert close(process) == 0


@pytest.mark.parametrize(
    ("setting", "env", "message"),
    [
        ('cloudflared_path = "/nonexistent/cloudflared"', {}, "cloudflared is not installed"),
        (
            f'provider = "ngrok"\nngrok_path = "{FAKES / "ngrok"}"',
            {"NGROK_AUTHTOKEN": ""},
            "NGROK_AUTHTOKEN is not set",
        ),
        (
            'provider = "ngrok"\nngrok_path = "/nonexistent/ngrok"',
            {"NGROK_AUTHTOKEN": "t" * 30},
            "ngrok is not installed",
        ),
        (
            f'hostname = "edge.example.org"\ncloudflared_path = "{FAKES / "cloudflared"}"',
            {},
            "needs its token",
        ),
    ],
)
def test_failures_are_one_readable_line(
    workspace: Workspace, receiver: Server, setting: str, env: dict[str, str], message: str
) -> None:
    workspace.edit("[rate_limit]", f"[tunnel]\n{setting}\n\n[rate_limit]")
    result = run_edgehook(
        "tunnel",
        cwd=workspace.dir,
        config=workspace.config_path,
        env={**os.environ, **env},
        timeout=60,
    )
    assert result.returncode == 1 and message in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0


def test_no_receiver_listening(workspace: Workspace) -> None:
    workspace.edit("port = 8090", f"port = {free_port()}")
    result = run_edgehook("tunnel", cwd=workspace.dir, config=workspace.config_path)
    assert result.returncode == 1 and "start `edgehook serve` first" in result.stderr
