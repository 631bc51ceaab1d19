"""retrain end to end through the worker: fetch, train, export, inference check, promotion;
then the commands that use the result (infer, model list, model rollback)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("torch")

from pipeline.artifacts import write_local_version
from pipeline.models import signing
from pipeline.training import synthetic
from tests.conftest import Workspace, run_edgehook
from tests.pipeline.conftest import add_rules, enqueue, job, log_text

pytestmark = pytest.mark.slow  # real training jobs


def local_dataset(root: Path, version: str, seed: int) -> None:
    x, y, classes = synthetic.make(per_class=40, size=16, seed=seed)
    staging = root.parent / f"staging-{seed}"
    synthetic.write_image_folder(staging, x, y, classes)
    files = {str(p.relative_to(staging)): p.read_bytes() for p in staging.rglob("*.png")}
    write_local_version(root, version, files, aliases=("retrain",))


def test_retrain_job_trains_exports_checks_and_promotes(
    workspace: Workspace, tmp_path: Path, run_worker: Callable[..., object]
) -> None:
    artifacts = tmp_path / "artifacts"
    local_dataset(artifacts, "team/proj/shapes:v0", seed=0)
    config = add_rules(workspace, f'[artifacts]\nsource = "local"\nlocal_root = "{artifacts}"\n')
    event = {
        "entity": "team",
        "project": "proj",
        "collection": "shapes",
        "alias": "retrain",
        "event_type": "ADD_ARTIFACT_ALIAS",
    }
    args = {"epochs": 4, "lr": 0.05, "batch_size": 32, "seed": 0}
    first = enqueue(config, "default-retrain", action="retrain", event=event, args=args)
    run_worker(config, audit_key=workspace.audit_key.encode())
    row = job(config, first)
    assert row["state"] == "succeeded", (row, log_text(config, first))
    assert "int8 accuracy" in str(row["summary"]) and "promoted job" in str(row["summary"])
    log = log_text(config, first)
    assert "fp32 epoch 3/3" in log and "qat: calibrated ranges, held-out accuracy" in log
    assert "inference check: 24/24 predictions agree" in log
    assert "int8 latency" in log
    active = config.models_dir / f"job{first}-attempt1"
    assert json.loads((config.models_dir / "registry.json").read_text())["active"] == active.name
    device_key = signing.load_private(workspace.dir / "secrets" / "model_signing_key")
    public = signing.public_text(device_key.public_key())
    assert signing.verify(active, [public]).key_id == signing.key_id(public)

    def cli(*words: str) -> subprocess.CompletedProcess[str]:
        return run_edgehook(*words, cwd=workspace.dir, config=workspace.config_path, timeout=120)

    sample = next((tmp_path / "staging-0" / "vertical").glob("*.png"))
    inferred = cli("infer", str(sample), "--top-k", "1", "--json")
    assert inferred.returncode == 0, inferred.stderr
    assert json.loads(inferred.stdout)["top"][0][0] == "vertical"

    second = enqueue(config, "default-retrain", action="retrain", event=event, args=args, n=1)
    run_worker(config, audit_key=workspace.audit_key.encode())
    assert job(config, second)["state"] == "succeeded"
    listed = cli("model", "list").stdout
    assert f"* job{second}-attempt1" in listed and f"  job{first}-attempt1" in listed
    rolled = cli("model", "rollback")
    assert rolled.returncode == 0 and f"job{first}-attempt1" in rolled.stdout


def test_train_and_infer_commands_without_a_webhook(tmp_path: Path) -> None:
    x, y, classes = synthetic.make(per_class=30, size=16)
    synthetic.write_npz(tmp_path / "data", x, y, classes)

    def cli(*words: str) -> subprocess.CompletedProcess[str]:
        return run_edgehook(*words, cwd=tmp_path, timeout=120)

    trained = cli(
        "train",
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "model"),
        "--epochs",
        "2",
        "--lr",
        "0.05",
    )
    assert trained.returncode == 0, trained.stderr
    assert "inference check: 18/18 agree" in trained.stdout
    assert "unsigned (no secrets.model_signing_key_file configured)" in trained.stdout
    bench = cli("infer", "--benchmark", "--json", "--model", str(tmp_path / "model"))
    assert bench.returncode == 0, bench.stderr
    figures = json.loads(bench.stdout)
    assert figures["int8_batch1_ms"] > 0 and figures["fp32_batch64_per_s"] > 0
    nothing = cli("infer", "--model", str(tmp_path / "model"))
    assert nothing.returncode == 1 and "no images given" in nothing.stderr
    missing = cli("infer", str(tmp_path / "nothing.png"), "--model", str(tmp_path / "model"))
    assert missing.returncode == 1 and "not a readable image" in missing.stderr
    (tmp_path / "empty").mkdir()
    bad = cli("train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "m2"))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


def test_retrain_then_publish_logs_the_run_and_the_signed_model_offline(
    workspace: Workspace, tmp_path: Path, run_worker: Callable[..., object]
) -> None:
    from tests.fakes.wandb_records import summarise

    pytest.importorskip("wandb")
    artifacts = tmp_path / "artifacts"
    local_dataset(artifacts, "team/proj/shapes:v0", seed=0)
    workspace.edit("allow_unsigned = false", 'allow_unsigned = false\npublish = "always"')
    config = add_rules(workspace, f'[artifacts]\nsource = "local"\nlocal_root = "{artifacts}"\n')
    event = {"entity": "team", "project": "proj", "collection": "shapes", "alias": "retrain"}
    retrain_id = enqueue(
        config,
        "default-retrain",
        action="retrain",
        event=event,
        args={"epochs": 3, "lr": 0.05, "batch_size": 32, "seed": 0},
    )
    run_worker(config, env={"WANDB_MODE": "offline"}, audit_key=workspace.audit_key.encode())
    summary = str(job(config, retrain_id)["summary"])
    assert "publishing as job" in summary
    publish_id = int(summary.rsplit("publishing as job ", 1)[1].split()[0])
    row = job(config, publish_id)
    assert row["state"] == "succeeded", log_text(config, publish_id)
    assert "upload with `wandb sync`" in str(row["summary"])
    run_file = next((config.jobs_dir / str(publish_id)).rglob("run-*.wandb"))
    logged = summarise(run_file)
    # 3 epochs: 2 fp32, then no QAT epoch (the calibrated int8 ranges already hold fp32's
    # held-out accuracy: pipeline/training/phases.py).
    assert [json.loads(h["epoch"]) for h in logged["history"] if "epoch" in h] == [1, 2]
    assert float(logged["summary"]["int8_accuracy"]) >= 0.9
    tables = {key.split("/")[0] for row in logged["history"] for key in row}
    assert {"confusion", "per_class"} <= tables, tables
    model = next(a for a in logged["artifacts"] if a["type"] == "model")
    assert model["name"] == "shapes-int8"
    assert {"candidate", "production"} <= set(model["aliases"])
    assert model["files"] == ["model.json", "model.safetensors", "model.sig"]
    metadata = json.loads(model["metadata"])
    device_key = signing.load_private(workspace.dir / "secrets" / "model_signing_key")
    assert metadata["edgehook_key_id"] == signing.key_id(
        signing.public_text(device_key.public_key())
    )
    assert metadata["edgehook_device"] == config.device_id  # what the receiver compares


def test_retrain_on_a_model_artifact_fine_tunes_it_if_signed_by_a_trusted_key(
    workspace: Workspace, tmp_path: Path, run_worker: Callable[..., object]
) -> None:
    artifacts = tmp_path / "artifacts"
    local_dataset(artifacts, "team/proj/shapes:v0", seed=0)
    config = add_rules(workspace, f'[artifacts]\nsource = "local"\nlocal_root = "{artifacts}"\n')
    data_event = {"entity": "team", "project": "proj", "collection": "shapes", "alias": "retrain"}
    args = {"epochs": 2, "lr": 0.05, "batch_size": 32, "seed": 0}
    first = enqueue(config, "default-retrain", action="retrain", event=data_event, args=args)
    run_worker(config, audit_key=workspace.audit_key.encode())
    trained_here = config.models_dir / f"job{first}-attempt1"
    write_local_version(
        artifacts,
        "team/proj/shapes-int8:v0",
        {p.name: p.read_bytes() for p in trained_here.iterdir()},
        aliases=("retrain",),
    )
    model_event = {**data_event, "collection": "shapes-int8"}
    second = enqueue(config, "default-retrain", action="retrain", event=model_event, args=args, n=1)
    run_worker(config, audit_key=workspace.audit_key.encode())
    row = job(config, second)
    assert row["state"] == "succeeded", log_text(config, second)
    assert "fine-tuned from team/proj/shapes-int8:v0, trained on team/proj/shapes:v0" in str(
        row["summary"]
    )
    meta = json.loads((config.models_dir / f"job{second}-attempt1" / "model.json").read_text())
    assert meta["sources"] == ["team/proj/shapes:v0", "team/proj/shapes-int8:v0"]
    assert (
        meta["normalisation"]
        == json.loads((trained_here / "model.json").read_text())["normalisation"]
    )

    stranger = tmp_path / "stranger.key"
    signing.generate(stranger)
    forged = tmp_path / "forged"
    forged.mkdir()
    for name in ("model.json", "model.safetensors"):
        (forged / name).write_bytes((trained_here / name).read_bytes())
    signing.sign(forged, signing.load_private(stranger))
    write_local_version(
        artifacts,
        "team/proj/other-int8:v0",
        {p.name: p.read_bytes() for p in forged.iterdir()},
        aliases=("retrain",),
    )
    third = enqueue(
        config,
        "default-retrain",
        action="retrain",
        args=args,
        n=2,
        event={**data_event, "collection": "other-int8"},
    )
    run_worker(config, audit_key=workspace.audit_key.encode())
    refused = job(config, third)
    assert refused["state"] == "failed" and "not trusted" in str(refused["reason"])
