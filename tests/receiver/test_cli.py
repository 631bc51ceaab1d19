import subprocess
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


def test_an_unexpected_error_is_one_line_not_a_trace(workspace: Workspace) -> None:
    # A store file that is not SQLite at all: nothing anticipates this.
    (workspace.dir / "data").mkdir(exist_ok=True)
    (workspace.dir / "data" / "edgehook.db").write_bytes(b"not a database" * 100)
    result = edgehook("jobs", "list", cwd=workspace.dir)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
