"""The receiver stays small: it never imports torch or wandb, directly or through a dependency."""

import subprocess
import sys

from tests.conftest import Workspace, free_port, start_server, stop_server

CHECK = """
import sys
import edgehook.cli, receiver.server, receiver.app, core.auditread, edgehook.sendtest
heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'wandb', 'numpy'})
print(','.join(heavy))
"""


def test_receiver_modules_import_neither_torch_nor_wandb() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_running_receiver_has_no_torch_or_wandb_mapped(workspace: Workspace) -> None:
    server = start_server(workspace, free_port())
    try:
        with open(f"/proc/{server.process.pid}/maps") as handle:
            maps = handle.read()
    finally:
        stop_server(server)
    assert "torch" not in maps and "wandb" not in maps
