"""The everyday commands stay light: `edgehook --help`, `audit` and `jobs` never load torch,
numpy or wandb (the commands that train, infer or serve a model import them inside).
Checked in a fresh interpreter, since this suite's own process has them all loaded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import Workspace, write_audit_lines

HEAVY = {"torch", "torchvision", "numpy", "wandb"}

# Runs one edgehook command in this process, then reports its exit code and the heavy
# packages loaded, as one JSON line after whatever the command printed.
PROBE = f"""
import json, sys
from edgehook.cli import main

try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({sorted(HEAVY)!r}))
print("PROBE", json.dumps([code, heavy]), flush=True)
"""


def probe(workspace: Workspace, *words: str) -> tuple[object, list[str], str]:
    """The command's exit code, the heavy packages it left loaded, and what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *words],
        cwd=workspace.dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    *printed, last = done.stdout.splitlines()
    assert last.startswith("PROBE "), done.stdout + done.stderr
    code, heavy = json.loads(last[6:])
    return code, heavy, "\n".join(printed)


@pytest.mark.parametrize(
    ("words", "says"),
    [
        (["--help"], "usage: edgehook"),
        (["audit", "verify"], "intact"),
        (["jobs", "list"], "ID      STATE"),
        (["jobs", "--help"], "usage: edgehook jobs"),
    ],
)
def test_everyday_commands_load_no_torch_numpy_or_wandb(
    workspace: Workspace, words: list[str], says: str
) -> None:
    write_audit_lines(workspace)
    code, heavy, printed = probe(workspace, *words)
    assert (code, heavy) == (0, [])
    assert says in printed
