"""The real wandb SDK (0.31.0) against a W&B-compatible server on loopback, through the
worker: a job child fetches and verifies the artifact exactly as on a device."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("wandb")

from core.config import Config
from tests.conftest import Workspace
from tests.fakes.wandb_server import FakeWandb
from tests.pipeline.conftest import add_rules, attempts, enqueue, job, log_text

pytestmark = pytest.mark.slow  # the wandb SDK against a slow or failing server, and training

EVENT = {"entity": "team", "project": "proj", "collection": "data", "alias": "retrain"}


@pytest.fixture
def fake() -> Iterator[FakeWandb]:
    with FakeWandb() as server:
        server.add("data", {"a.txt": b"hello", "b/c.bin": b"x" * 100}, ["retrain"])
        yield server


def config_for(workspace: Workspace) -> Config:
    return add_rules(
        workspace,
        """
[[rules]]
name = "fetch"
event = "ADD_ARTIFACT_ALIAS"
action = "download"
max_retries = 1
env_allow = ["WANDB_API_KEY", "WANDB_BASE_URL", "WANDB__GRAPHQL_RETRY_MAX",
             "WANDB_ERROR_REPORTING", "WANDB_SILENT"]
""",
    )


def run(
    workspace: Workspace,
    fake: FakeWandb,
    run_worker: Callable[..., object],
    event: dict[str, str] = EVENT,
) -> tuple[Config, int]:
    config = config_for(workspace)
    # max_attempts as the receiver would set it from the rule (max_retries = 1)
    job_id = enqueue(config, "fetch", action="download", event=event, max_attempts=2)
    env = {
        "WANDB_BASE_URL": fake.url,
        "WANDB__GRAPHQL_RETRY_MAX": "1",
        "WANDB_ERROR_REPORTING": "false",
        "WANDB_SILENT": "true",
    }
    run_worker(config, env=env, wandb_key="k" * 40)
    return config, job_id


def test_download_fetches_and_verifies(
    workspace: Workspace, fake: FakeWandb, run_worker: Callable[..., object]
) -> None:
    config, job_id = run(workspace, fake, run_worker)
    row = job(config, job_id)
    assert row["state"] == "succeeded", log_text(config, job_id)
    assert "downloaded team/proj/data:v0: 2 files, 105 bytes" in str(row["summary"])
    root = config.jobs_dir / str(job_id) / "attempt-1" / "artifact"
    assert (root / "b" / "c.bin").read_bytes() == b"x" * 100
    assert {
        "ArtifactMembershipByName",
        "FetchArtifactManifest",
        "GetArtifactMembershipFileUrls",
    } <= set(fake.operations)


def test_a_tampered_file_of_the_right_size_fails_the_job(
    workspace: Workspace, fake: FakeWandb, run_worker: Callable[..., object]
) -> None:
    fake.tamper = {"b/c.bin"}
    config, job_id = run(workspace, fake, run_worker)
    row = job(config, job_id)
    assert row["state"] == "failed" and "digest mismatch" in str(row["reason"])
    assert attempts(config, job_id) == ["failed"]  # not retried: the bytes are wrong


def test_a_missing_artifact_fails_at_once(
    workspace: Workspace, fake: FakeWandb, run_worker: Callable[..., object]
) -> None:
    config, job_id = run(workspace, fake, run_worker, {**EVENT, "collection": "nope"})
    row = job(config, job_id)
    assert row["state"] == "failed" and "not found in W&B" in str(row["reason"])


def test_a_server_error_is_transient_and_fails_fast(
    workspace: Workspace, fake: FakeWandb, run_worker: Callable[..., object], tmp_path: Path
) -> None:
    import time

    fake.fail_graphql = True
    started = time.monotonic()
    config, job_id = run(workspace, fake, run_worker)
    assert time.monotonic() - started < 60  # not minutes of SDK retries
    row = job(config, job_id)
    assert row["state"] == "failed" and "W&B unavailable" in str(row["reason"])
    assert attempts(config, job_id) == ["retry", "failed"]  # retried once (max_retries = 1)


def test_round_trip_train_sign_download_from_wandb_verify_deploy(
    workspace: Workspace, fake: FakeWandb, run_worker: Callable[..., object], tmp_path: Path
) -> None:
    """A model trained and signed on one device, served by W&B, deployed on another."""
    pytest.importorskip("torch")
    from pipeline.models import registry, signing
    from pipeline.models.modelfile import save
    from pipeline.training import synthetic
    from pipeline.training.datasets import read_dataset
    from pipeline.training.train import TrainConfig, train

    synthetic.write_npz(tmp_path / "data", *synthetic.make(per_class=20, size=16))
    trained = train(read_dataset(tmp_path / "data"), TrainConfig(epochs=1), log=lambda _: None)
    other_device = signing.generate(tmp_path / "other-device.key")
    save(tmp_path / "model", trained, sources=["team/proj/data:v0"], device="trainer-box")
    signing.sign(tmp_path / "model", signing.load_private(tmp_path / "other-device.key"))
    fake.add(
        "shapes-int8",
        {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()},
        ["production"],
        type="model",
    )
    workspace.edit("trusted_keys = []", f'trusted_keys = ["{other_device}"]')
    config = add_rules(
        workspace,
        """
[[rules]]
name = "ship"
event = "ADD_ARTIFACT_ALIAS"
alias = "production"
action = "deploy"
env_allow = ["WANDB_API_KEY", "WANDB_BASE_URL", "WANDB__GRAPHQL_RETRY_MAX", "WANDB_SILENT"]
""",
    )
    job_id = enqueue(
        config,
        "ship",
        action="deploy",
        event={
            "entity": "team",
            "project": "proj",
            "collection": "shapes-int8",
            "alias": "production",
        },
    )
    run_worker(
        config,
        env={"WANDB_BASE_URL": fake.url, "WANDB__GRAPHQL_RETRY_MAX": "1", "WANDB_SILENT": "true"},
        wandb_key="k" * 40,
    )
    row = job(config, job_id)
    assert row["state"] == "succeeded", log_text(config, job_id)
    assert f"signed by {signing.key_id(other_device)}" in str(row["summary"])
    active = registry.active(config.models_dir)
    assert active is not None and (active / "model.sig").exists()


def test_wandb_trouble_after_training_never_loses_the_model(
    workspace: Workspace, fake: FakeWandb, run_worker: Callable[..., object], tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    from pipeline.artifacts import write_local_version
    from pipeline.models import registry
    from pipeline.training import synthetic

    x, y, classes = synthetic.make(per_class=20, size=16)
    synthetic.write_npz(tmp_path / "staging", x, y, classes)
    write_local_version(
        tmp_path / "artifacts",
        "team/proj/data:v0",
        {"data.npz": (tmp_path / "staging" / "data.npz").read_bytes()},
        aliases=("retrain",),
    )
    workspace.edit(
        "allow_unsigned = false", 'allow_unsigned = false\npublish = "always"\npublish_retries = 0'
    )
    config = add_rules(
        workspace, f'[artifacts]\nsource = "local"\nlocal_root = "{tmp_path / "artifacts"}"\n'
    )
    fake.fail_graphql = True
    retrain = enqueue(config, "default-retrain", action="retrain", event=EVENT, args={"epochs": 1})
    run_worker(
        config,
        env={
            "WANDB_BASE_URL": fake.url,
            "WANDB__GRAPHQL_RETRY_MAX": "1",
            "WANDB_INIT_TIMEOUT": "10",
        },
        wandb_key="k" * 40,
    )
    assert job(config, retrain)["state"] == "succeeded"
    publish = retrain + 1
    row = job(config, publish)
    assert row["rule"] == "edgehook-publish" and row["state"] == "failed"
    assert "W&B unavailable" in str(row["reason"])
    active = registry.active(config.models_dir)
    assert active is not None and active.name == f"job{retrain}-attempt1"
    assert (active / "model.sig").exists()


def test_a_dropped_connection_is_retried_and_the_download_completes(
    workspace: Workspace, fake: FakeWandb, run_worker: Callable[..., object]
) -> None:
    fake.drop_files = 1  # the first file request: connection closed, no answer
    config, job_id = run(workspace, fake, run_worker)
    row = job(config, job_id)
    assert row["state"] == "succeeded", log_text(config, job_id, len(attempts(config, job_id)))
    assert attempts(config, job_id)[-1] == "succeeded"
    assert fake.file_requests >= 3  # the dropped one was asked for again
    root = config.jobs_dir / str(job_id) / f"attempt-{len(attempts(config, job_id))}" / "artifact"
    assert (root / "b" / "c.bin").read_bytes() == b"x" * 100  # and verified


def test_a_server_that_keeps_dropping_connections_fails_the_job_as_unavailable(
    workspace: Workspace, fake: FakeWandb, run_worker: Callable[..., object]
) -> None:
    import time

    fake.drop_files = 10**6
    workspace.edit("[rate_limit]", "[artifacts]\ndownload_timeout_s = 5\n\n[rate_limit]")
    started = time.monotonic()
    config, job_id = run(workspace, fake, run_worker)
    assert time.monotonic() - started < 60  # not the SDK's 20 minutes of retries
    row = job(config, job_id)
    assert row["state"] == "failed", row
    assert "did not finish within 5 s" in str(row["reason"]), row
    assert attempts(config, job_id) == ["retry", "failed"]  # transient: retried once


def test_a_slow_server_within_the_rules_timeout_completes(
    workspace: Workspace, fake: FakeWandb, run_worker: Callable[..., object]
) -> None:
    fake.file_delay_s = 1.0
    config, job_id = run(workspace, fake, run_worker)
    assert job(config, job_id)["state"] == "succeeded"
    assert attempts(config, job_id) == ["succeeded"]


def test_a_server_slower_than_the_rules_timeout_fails_the_job_with_the_reason(
    workspace: Workspace, fake: FakeWandb, run_worker: Callable[..., object]
) -> None:
    fake.file_delay_s = 30.0
    config_for(workspace)
    text = workspace.config_path.read_text().replace(
        "max_retries = 1", "max_retries = 0\ntimeout_s = 8"
    )
    workspace.config_path.write_text(text)
    config = workspace.config()
    job_id = enqueue(config, "fetch", action="download", event=EVENT, max_attempts=1)
    env = {"WANDB_BASE_URL": fake.url, "WANDB__GRAPHQL_RETRY_MAX": "1", "WANDB_SILENT": "true"}
    run_worker(config, env=env, wandb_key="k" * 40)
    row = job(config, job_id)
    assert row["state"] == "failed" and "timed out after 8 s" in str(row["reason"]), row
