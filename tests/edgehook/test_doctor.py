"""edgehook doctor: one line per finding, exit status = the worst finding."""

from __future__ import annotations

import json
import os

from tests.conftest import (
    Workspace,
    edit_audit_line,
    free_port,
    run_edgehook,
    start_server,
    stop_server,
    write_audit_lines,
)


def doctor(workspace: Workspace) -> tuple[int, list[str]]:
    result = run_edgehook("doctor", cwd=workspace.dir, config=workspace.config_path)
    assert "Traceback" not in result.stderr
    return result.returncode, result.stdout.splitlines()


def test_a_fresh_install_passes_with_warnings(workspace: Workspace) -> None:
    code, lines = doctor(workspace)
    assert code == 1
    assert lines[0].startswith("PASS  config")
    assert all(entry.split()[0] in ("PASS", "WARN") for entry in lines)
    assert any(entry.startswith("PASS  bind") for entry in lines)
    assert any(entry.startswith("WARN  tunnel") for entry in lines)


def test_a_bad_config_fails_in_one_line(workspace: Workspace) -> None:
    workspace.edit("port = 8090", "port = 0")
    code, lines = doctor(workspace)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("FAIL  config")
    assert "server.port" in lines[0]


def test_an_exposed_secret_fails(workspace: Workspace) -> None:
    os.chmod(workspace.dir / "secrets" / "access_token", 0o644)
    code, lines = doctor(workspace)
    assert code == 2
    assert any(entry.startswith("FAIL  secrets") and "chmod 600" in entry for entry in lines)


def test_a_damaged_audit_chain_fails(workspace: Workspace) -> None:
    edit_audit_line(write_audit_lines(workspace))
    code, lines = doctor(workspace)
    assert code == 2
    assert any(entry.startswith("FAIL  audit") and "edited" in entry for entry in lines)


def test_a_recorded_tunnel_that_answers_passes(workspace: Workspace) -> None:
    server = start_server(workspace, free_port())
    try:
        (workspace.dir / "data" / "tunnel.json").write_text(json.dumps({"url": server.url}))
        _, lines = doctor(workspace)
    finally:
        stop_server(server)
    assert any(entry.startswith("PASS  tunnel") and "answers /healthz" in entry for entry in lines)
    assert any(entry.startswith("PASS  store") for entry in lines)
    assert any(entry.startswith("PASS  audit") for entry in lines)
