import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import (
    Workspace,
    edit_audit_line,
    free_port,
    run_edgehook,
    write_audit_lines,
)

SUBCOMMANDS = [
    ["init"],
    ["serve"],
    ["send-test"],
    ["doctor"],
    ["worker"],
    ["jobs"],
    ["train"],
    ["infer"],
    ["model"],
    ["keys"],
    ["audit"],
    ["audit", "verify"],
    ["audit", "show"],
    ["audit", "tail"],
]


def edgehook(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_edgehook(*args, cwd=cwd, env=env, timeout=60)


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help_with_examples(words: list[str], tmp_path: Path) -> None:
    result = edgehook(*words, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "examples:" in result.stdout and "edgehook" in result.stdout


def test_init_prints_wandb_instructions_and_refuses_to_overwrite(tmp_path: Path) -> None:
    first = edgehook("init", "--dir", str(tmp_path / "x"), cwd=tmp_path)
    assert first.returncode == 0
    assert "Access token" in first.stdout and "${event_type}" in first.stdout
    second = edgehook("init", "--dir", str(tmp_path / "x"), cwd=tmp_path)
    assert second.returncode == 1
    assert second.stderr.count("\n") == 1 and "refusing to overwrite" in second.stderr


def test_config_error_is_one_line_exit_2(workspace: Workspace) -> None:
    workspace.edit("port = 8090", "port = 99999")
    result = edgehook("serve", cwd=workspace.dir)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "server.port" in result.stderr and "fix:" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_missing_secret_and_public_bind(workspace: Workspace) -> None:
    (workspace.dir / "secrets" / "access_token").unlink()
    result = edgehook("serve", cwd=workspace.dir)
    assert result.returncode == 2 and "access_token" in result.stderr
    assert "Traceback" not in result.stderr
    public = edgehook(
        "serve", cwd=workspace.dir, env={"EDGEHOOK_HOST": "0.0.0.0", "PATH": "/usr/bin"}
    )
    assert public.returncode == 2 and "--allow-public-bind" in public.stderr


def test_send_test_to_nothing_is_one_readable_line(workspace: Workspace) -> None:
    result = edgehook("send-test", f"http://127.0.0.1:{free_port()}/webhook", cwd=workspace.dir)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "cannot reach" in result.stderr
    bad = edgehook("send-test", "file:///etc/passwd", cwd=workspace.dir)
    assert bad.returncode == 1 and "not an http(s) URL" in bad.stderr


def test_audit_verify_exit_codes(workspace: Workspace) -> None:
    segment = write_audit_lines(workspace)
    assert edgehook("audit", "verify", cwd=workspace.dir).returncode == 0
    edit_audit_line(segment)
    result = edgehook("audit", "verify", cwd=workspace.dir)
    assert result.returncode == 1 and "edited" in result.stdout and "line 2" in result.stdout
    shown = edgehook("audit", "show", "--since", "garbage", cwd=workspace.dir)
    assert shown.returncode == 1 and "--since" in shown.stderr


def test_a_broken_store_is_one_line_not_a_trace(workspace: Workspace) -> None:
    # A store file that is not SQLite at all.
    (workspace.dir / "data").mkdir(exist_ok=True)
    (workspace.dir / "data" / "edgehook.db").write_bytes(b"not a database" * 100)
    result = edgehook("jobs", "list", cwd=workspace.dir)
    assert result.returncode == 1
    store = workspace.dir / "data" / "edgehook.db"
    assert result.stderr == f"edgehook: cannot open the store at {store}: file is not a database\n"
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_serve_takes_host_and_port_and_the_global_options_after_the_subcommand(
    workspace: Workspace, tmp_path: Path
) -> None:
    port = free_port()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgehook",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--config",
            str(workspace.config_path),
            "--log-level",
            "warning",
        ],
        cwd=elsewhere,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "serve --port did not answer"
                time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()
    # The config given after the subcommand was the one used: its data dir holds the audit.
    assert (workspace.dir / "data" / "audit" / "audit-000001.jsonl").is_file()


def test_serve_host_follows_the_config_rules(workspace: Workspace) -> None:
    public = edgehook("serve", "--host", "0.0.0.0", cwd=workspace.dir)
    assert public.returncode == 2
    assert public.stderr == (
        "edgehook: config error: --host: 0.0.0.0 is not a loopback address; fix: keep "
        "127.0.0.1 (the tunnel is the way in) or pass --allow-public-bind\n"
    )
    bad_port = edgehook("serve", "--port", "70000", cwd=workspace.dir)
    assert bad_port.returncode == 2
    assert "argument --port: '70000' is not a port (use 1-65535)" in bad_port.stderr


def test_audit_show_lost_lists_genuine_deliveries_that_were_refused(workspace: Workspace) -> None:
    from core.audit import AuditLog
    from core.config import AuditConfig

    log = AuditLog(
        workspace.dir / "data" / "audit",
        workspace.audit_key.encode(),
        AuditConfig(),
        clock=time.time,
    )
    digest = "ab" * 32
    log.record("request", request_id="r1", status=202, decision="accepted", proven=True)
    log.record(
        "request",
        request_id="r2",
        status=503,
        decision="unavailable",
        reason="store_unavailable",
        proven=True,
        body_sha256=digest,
        event="ADD_ARTIFACT_ALIAS t/p/c:v1 +retrain",
    )
    log.record("request", request_id="r3", status=401, decision="rejected", reason="bad_token")
    log.close()
    shown = edgehook("audit", "show", "--lost", cwd=workspace.dir)
    assert shown.returncode == 0, shown.stderr
    header, *rows = shown.stdout.splitlines()
    assert header.split() == ["TS", "STATUS", "REASON", "REQUEST_ID", "EVENT", "BODY_SHA256"]
    assert len(rows) == 1
    assert rows[0].split()[1:5] == ["503", "store_unavailable", "r2", "ADD_ARTIFACT_ALIAS"]
    assert rows[0].split()[-1] == digest
