"""`edgehook console` refuses, in one line, what it must not start with."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import make_workspace, run_edgehook


def test_a_public_host_needs_allow_public_bind(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path)
    done = run_edgehook("console", "--host", "0.0.0.0", cwd=tmp_path,
                        config=workspace.config_path)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("edgehook: config error: --host:")
    assert len(done.stderr.strip().splitlines()) == 1


def test_no_console_token_is_a_config_error_naming_it(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path)
    workspace.edit('console_token_file = "secrets/console_token"', "")
    done = run_edgehook("console", cwd=tmp_path, config=workspace.config_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "edgehook: config error: EDGEHOOK_CONSOLE_TOKEN: is not set; fix: set "
        "EDGEHOOK_CONSOLE_TOKEN, EDGEHOOK_CONSOLE_TOKEN_FILE or secrets.console_token_file "
        "(`edgehook init` makes one)"
    )
