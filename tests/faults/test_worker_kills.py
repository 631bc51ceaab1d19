"""Fault matrix: the worker SIGKILLed during each phase of a real retrain job (download,
training, export with its inference check, the W&B upload). Afterwards a new worker finishes
the job: nothing acknowledged is lost, nothing completes twice (one succeeded attempt, one
registered model, one logged run), and the child of the dead worker died with it."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("wandb")

from core.config import Config
from pipeline.artifacts import write_local_version
from pipeline.models import registry
from pipeline.training import synthetic
from tests.conftest import Workspace, run_edgehook
from tests.fakes.wandb_server import FakeWandb
from tests.pipeline.conftest import (
    add_rules,
    attempts,
    edgehook,
    enqueue,
    job,
    processes_with,
    wait_for,
)

pytestmark = pytest.mark.slow  # real retrain jobs killed and finished again: minutes

EVENT = {"entity": "team", "project": "proj", "collection": "shapes", "alias": "retrain"}
ARGS = {"epochs": 6, "lr": 0.05, "batch_size": 16, "seed": 0}
WORKER = "lease_s = 2\nheartbeat_s = 0.5\n"


def dataset_files(tmp_path: Path) -> dict[str, bytes]:
    x, y, classes = synthetic.make(per_class=60, size=16, seed=0)
    staging = tmp_path / "staging"
    synthetic.write_image_folder(staging, x, y, classes)
    return {str(p.relative_to(staging)): p.read_bytes() for p in staging.rglob("*.png")}


@pytest.fixture
def fake() -> Iterator[FakeWandb]:
    with FakeWandb() as server:
        yield server


def log_of(config: Config, job_id: int, attempt: int = 1) -> str:
    path = config.jobs_dir / str(job_id) / f"attempt-{attempt}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def job_children(workspace: Workspace) -> list[str]:
    """This test's job children: other suites on the machine run pipeline.runjob too, so
    only the children working in this workspace's job directories count."""
    found = []
    for line in processes_with("pipeline.runjob"):
        try:
            cwd = Path(f"/proc/{line.split()[0]}/cwd").resolve(strict=True)
        except OSError:
            continue  # gone meanwhile, or not ours to look at
        if cwd.is_relative_to(workspace.dir.resolve()):
            found.append(line)
    return found


def lease_expires(config: Config) -> float:
    """When the last lease held by a running job runs out (0 when no job holds one)."""
    with contextlib.closing(sqlite3.connect(config.store_path)) as db:
        (expires,) = db.execute(
            "SELECT MAX(lease_expires) FROM jobs WHERE state = 'running'"
        ).fetchone()
    return float(expires or 0.0)


def kill_then_recover(
    workspace: Workspace,
    env: dict[str, str],
    when: Callable[[], bool],
    timeout: float = 60,
) -> None:
    worker = edgehook(workspace, "worker", env=env)
    try:
        wait_for(when, timeout=timeout)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    # the job's child dies with its worker (parent-death signal), before the lease expires
    wait_for(lambda: not job_children(workspace), timeout=10)
    expires = lease_expires(workspace.config())
    wait_for(lambda: time.time() > expires, timeout=10)  # the dead worker's lease has run out
    again = edgehook(workspace, "worker", "--once", env=env)
    assert again.wait(timeout=240) == 0


def check_exactly_once(config: Config, workspace: Workspace, retrain: int) -> None:
    row = job(config, retrain)
    assert row["state"] == "succeeded", (row, log_of(config, retrain, 2))
    names = sorted(p.name for p in config.models_dir.iterdir() if p.is_dir())
    assert names == [f"job{retrain}-attempt2"]  # the killed attempt registered nothing
    assert registry.state(config.models_dir)["active"] == f"job{retrain}-attempt2"
    verify = run_edgehook("audit", "verify", cwd=workspace.dir, config=workspace.config_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize("phase", ["download", "training", "export"])
def test_worker_killed_mid_retrain_finishes_exactly_once(
    workspace: Workspace, tmp_path: Path, fake: FakeWandb, phase: str
) -> None:
    files = dataset_files(tmp_path)
    env = {"WANDB_BASE_URL": fake.url, "WANDB__GRAPHQL_RETRY_MAX": "1", "WANDB_SILENT": "true"}
    if phase == "download":  # from W&B, slowly: the kill lands while files are arriving
        fake.add("shapes", files, ["retrain"])
        fake.file_delay_s = 0.02
        env["EDGEHOOK_WANDB_API_KEY"] = "k" * 40
        workspace.edit("allow_unsigned = false", 'allow_unsigned = false\npublish = "never"')
        config = add_rules(workspace, '[artifacts]\nsource = "wandb"\n', worker=WORKER)

        def when() -> bool:
            return fake.file_requests >= 5
    else:
        artifacts = tmp_path / "artifacts"
        write_local_version(artifacts, "team/proj/shapes:v0", files, aliases=("retrain",))
        config = add_rules(
            workspace,
            f'[artifacts]\nsource = "local"\nlocal_root = "{artifacts}"\n',
            worker=WORKER,
        )
        marker = "epoch 2/" if phase == "training" else "int8 latency"

        def when() -> bool:
            return marker in log_of(config, retrain)

    retrain = enqueue(config, "default-retrain", action="retrain", event=EVENT, args=ARGS)
    kill_then_recover(workspace, env, when)
    assert attempts(config, retrain) == ["lost", "succeeded"]
    # the kill landed in the phase named, not after it
    killed = log_of(config, retrain, 1)
    after = {"download": "training ", "training": "int8 latency", "export": "inference check"}
    assert after[phase] not in killed, killed
    check_exactly_once(config, workspace, retrain)


def test_worker_killed_mid_upload_logs_the_run_exactly_once(
    workspace: Workspace, tmp_path: Path
) -> None:
    files = dataset_files(tmp_path)
    artifacts = tmp_path / "artifacts"
    write_local_version(artifacts, "team/proj/shapes:v0", files, aliases=("retrain",))
    workspace.edit("allow_unsigned = false", 'allow_unsigned = false\npublish = "always"')
    config = add_rules(
        workspace, f'[artifacts]\nsource = "local"\nlocal_root = "{artifacts}"\n', worker=WORKER
    )
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    retrain = enqueue(config, "default-retrain", action="retrain", event=EVENT, args=ARGS)
    publish = retrain + 1

    def uploading() -> bool:
        return job(config, retrain)["state"] == "succeeded" and "wandb" in " ".join(
            p.name for p in (config.jobs_dir / str(publish) / "attempt-1").glob("*")
        )

    kill_then_recover(workspace, env, uploading, timeout=120)
    assert attempts(config, retrain) == ["succeeded"]
    assert job(config, publish)["state"] == "succeeded", log_of(config, publish, 2)
    assert attempts(config, publish) == ["lost", "succeeded"]
    summary = str(job(config, publish)["summary"])
    assert f"jobs/{publish}/attempt-2/wandb/offline-run-" in summary  # the one run to sync
    assert "attempt-1" not in summary
    active = registry.active(config.models_dir)
    assert active is not None and active.name == f"job{retrain}-attempt1"
    assert json.loads((active / "model.json").read_text())["job_id"] == retrain
