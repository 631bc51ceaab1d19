"""The light processes stay light: the worker, the queue and the outcomes never load torch,
numpy or wandb (a job's child does that), and the watcher loads wandb only when it talks to
W&B, never torch. Checked in a fresh interpreter, since this suite's own process has them all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Workspace
from tests.pipeline.conftest import add_rules, command_rule, enqueue, job, python_command

HEAVY = {"torch", "torchvision", "numpy", "wandb"}

# Imports the light modules, reports what heavy packages are loaded, runs one edgehook
# command in this same process, and reports again: one JSON line each, then the code.
PROBE = f"""
import json, sys
import pipeline.worker, pipeline.queue, pipeline.outcomes, pipeline.jobs, pipeline.sandbox
import pipeline.watch
from edgehook.cli import main

def heavy():
    return sorted({{m.split(".")[0] for m in sys.modules}} & set({sorted(HEAVY)!r}))

print("PROBE", json.dumps(heavy()), flush=True)
code = main(sys.argv[1:])
print("PROBE", json.dumps(heavy()), flush=True)
print("PROBE", json.dumps(code), flush=True)
"""


def probe(workspace: Workspace, *words: str, env: dict[str, str] | None = None) -> list[object]:
    """Heavy packages loaded after the imports, after the command, and its exit code."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "--config", str(workspace.config_path), *words],
        cwd=workspace.dir,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    found = [json.loads(line[6:]) for line in done.stdout.splitlines() if line[:6] == "PROBE "]
    assert len(found) == 3, done.stdout + done.stderr
    return found


def test_the_worker_running_a_job_loads_no_torch_numpy_or_wandb(
    workspace: Workspace, tmp_path: Path
) -> None:
    config = add_rules(workspace, command_rule("light", python_command(tmp_path, "print(1)")))
    job_id = enqueue(config, "light")
    assert probe(workspace, "worker", "--once") == [[], [], 0]
    assert job(config, job_id)["state"] == "succeeded"


@pytest.mark.slow  # the wandb SDK, started in a fresh process
def test_the_watcher_loads_wandb_only_to_poll_and_never_torch(workspace: Workspace) -> None:
    pytest.importorskip("wandb")
    from tests.fakes.wandb_server import FakeWandb

    watched = "team/proj/ds:production"
    workspace.edit("[models]", '[artifacts]\nsource = "wandb"\n\n[models]')
    add_rules(workspace, "", worker=f'\n[watch]\nartifacts = ["{watched}"]\n')
    with FakeWandb() as fake:
        fake.add("ds", {"a.txt": b"first"}, ["production"])
        env = {
            "WANDB_BASE_URL": fake.url,
            "WANDB__GRAPHQL_RETRY_MAX": "1",
            "WANDB_SILENT": "true",
            "WANDB_ERROR_REPORTING": "false",
            "EDGEHOOK_WANDB_API_KEY": "k" * 40,
        }
        before, after, code = probe(workspace, "watch", "--once", env=env)
    assert (before, code) == ([], 0)
    # One poll went through the wandb SDK, which imports numpy itself; torch never comes.
    assert isinstance(after, list) and set(after) - {"numpy"} == {"wandb"}
