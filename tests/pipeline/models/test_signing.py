"""Model signing: sign, verify, refuse tampered or untrusted models; deploy end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

pytest.importorskip("torch")

from core.config import Config
from core.errors import JobError
from pipeline.models import registry, signing
from pipeline.models.modelfile import save, sha256
from pipeline.training import synthetic
from pipeline.training.datasets import read_dataset
from pipeline.training.train import TrainConfig, train
from tests.conftest import Workspace, run_edgehook
from tests.pipeline.conftest import add_rules, enqueue, job, log_text

pytestmark = pytest.mark.slow  # trains the models it signs


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("signed")
    synthetic.write_npz(root / "data", *synthetic.make(per_class=30, size=16))
    trained = train(read_dataset(root / "data"), TrainConfig(epochs=2, lr=0.05), log=lambda _: None)
    save(root / "model", trained, sources=["test"])
    return root / "model"


@dataclass(frozen=True)
class Keys:
    trusted: str
    stranger: str
    trusted_key: Ed25519PrivateKey
    stranger_key: Ed25519PrivateKey


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    trusted = signing.generate(tmp_path / "keys" / "trusted")
    stranger = signing.generate(tmp_path / "keys" / "stranger")
    return Keys(
        trusted,
        stranger,
        signing.load_private(tmp_path / "keys" / "trusted"),
        signing.load_private(tmp_path / "keys" / "stranger"),
    )


def copy_of(model_dir: Path, tmp_path: Path, name: str = "model") -> Path:
    target = tmp_path / name
    shutil.copytree(model_dir, target)
    (target / "model.sig").unlink(missing_ok=True)
    return target


def test_sign_and_verify(model_dir: Path, tmp_path: Path, keys: Keys) -> None:
    model = copy_of(model_dir, tmp_path)
    signed = signing.sign(model, keys.trusted_key)
    assert signing.verify(model, [keys.trusted]).key_id == signed.key_id
    assert signed.key_id == signing.key_id(keys.trusted)
    assert (tmp_path / "keys" / "trusted").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("damage", ["weights", "metadata", "signature", "unsigned", "stranger"])
def test_tampered_unsigned_or_untrusted_models_are_refused(
    model_dir: Path, tmp_path: Path, keys: Keys, damage: str
) -> None:
    model = copy_of(model_dir, tmp_path)
    signing.sign(model, keys.stranger_key if damage == "stranger" else keys.trusted_key)
    if damage == "weights":
        data = bytearray((model / "model.safetensors").read_bytes())
        data[-1] ^= 1
        (model / "model.safetensors").write_bytes(bytes(data))
        meta = json.loads((model / "model.json").read_text())
        meta["weights_sha256"] = sha256(model / "model.safetensors")  # consistent forgery
        (model / "model.json").write_text(json.dumps(meta))
    elif damage == "metadata":
        meta = json.loads((model / "model.json").read_text())
        meta["metrics"]["int8_accuracy"] = 1.0
        (model / "model.json").write_text(json.dumps(meta))
    elif damage == "signature":
        record = json.loads((model / "model.sig").read_text())
        record["signature"] = record["signature"][::-1]
        (model / "model.sig").write_text(json.dumps(record))
    elif damage == "unsigned":
        (model / "model.sig").unlink()
    with pytest.raises(JobError) as exc:
        signing.verify(model, [keys.trusted])
    expected = {
        "weights": "does not match",
        "metadata": "does not match",
        "signature": "does not match|malformed",
        "unsigned": "not signed",
        "stranger": "not trusted",
    }[damage]
    assert any(word in str(exc.value) for word in expected.split("|"))


def deploy_config(
    workspace: Workspace,
    artifacts: Path,
    *,
    trusted: str | None = None,
    allow_unsigned: bool = False,
) -> Config:
    if trusted is not None:
        workspace.edit("trusted_keys = []", f'trusted_keys = ["{trusted}"]')
    if allow_unsigned:
        workspace.edit("allow_unsigned = false", "allow_unsigned = true")
    return add_rules(
        workspace,
        f"""
[artifacts]
source = "local"
local_root = "{artifacts}"

[[rules]]
name = "ship"
event = "ADD_ARTIFACT_ALIAS"
alias = "production"
action = "deploy"
""",
    )


def publish(model: Path, artifacts: Path, version: str) -> None:
    from pipeline.artifacts import write_local_version

    write_local_version(
        artifacts,
        version,
        {p.name: p.read_bytes() for p in model.iterdir()},
        aliases=("production",),
    )


EVENT = {"entity": "team", "project": "proj", "collection": "model", "alias": "production"}


def test_deploy_accepts_a_model_signed_by_a_trusted_key(
    model_dir: Path,
    tmp_path: Path,
    keys: Keys,
    workspace: Workspace,
    run_worker: Callable[..., object],
) -> None:
    model = copy_of(model_dir, tmp_path)
    signing.sign(model, keys.trusted_key)
    publish(model, tmp_path / "artifacts", "team/proj/model:v1")
    config = deploy_config(workspace, tmp_path / "artifacts", trusted=keys.trusted)
    job_id = enqueue(config, "ship", action="deploy", event=EVENT)
    run_worker(config, audit_key=workspace.audit_key.encode())
    row = job(config, job_id)
    assert row["state"] == "succeeded", log_text(config, job_id)
    assert f"signed by {signing.key_id(keys.trusted)}" in str(row["summary"])
    assert Path(str(registry.active(config.models_dir))).name == f"job{job_id}-attempt1"


@pytest.mark.parametrize("case", ["stranger", "unsigned"])
def test_deploy_refuses_untrusted_or_unsigned_models(
    model_dir: Path,
    tmp_path: Path,
    keys: Keys,
    workspace: Workspace,
    run_worker: Callable[..., object],
    case: str,
) -> None:
    model = copy_of(model_dir, tmp_path)
    if case == "stranger":
        signing.sign(model, keys.stranger_key)
    publish(model, tmp_path / "artifacts", "team/proj/model:v1")
    config = deploy_config(workspace, tmp_path / "artifacts", trusted=keys.trusted)
    job_id = enqueue(config, "ship", action="deploy", event=EVENT)
    run_worker(config, audit_key=workspace.audit_key.encode())
    row = job(config, job_id)
    assert row["state"] == "failed"
    assert ("not trusted" if case == "stranger" else "not signed") in str(row["reason"])
    assert registry.active(config.models_dir) is None


def test_allow_unsigned_deploys_loudly(
    model_dir: Path, tmp_path: Path, workspace: Workspace, run_worker: Callable[..., object]
) -> None:
    publish(copy_of(model_dir, tmp_path), tmp_path / "artifacts", "team/proj/model:v1")
    config = deploy_config(workspace, tmp_path / "artifacts", allow_unsigned=True)
    job_id = enqueue(config, "ship", action="deploy", event=EVENT)
    run_worker(config, audit_key=workspace.audit_key.encode())
    assert job(config, job_id)["state"] == "succeeded"
    assert "WARNING: models.allow_unsigned" in log_text(config, job_id)


def test_keys_and_model_verify_commands(
    model_dir: Path, tmp_path: Path, workspace: Workspace
) -> None:
    def cli(*words: str) -> subprocess.CompletedProcess[str]:
        return run_edgehook(*words, cwd=workspace.dir, config=workspace.config_path, timeout=60)

    shown = cli("keys", "show")
    assert shown.returncode == 0 and shown.stdout.startswith("ed25519:")
    again = cli("keys", "init")
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    model = copy_of(model_dir, tmp_path)
    unsigned = cli("model", "verify", str(model))
    assert unsigned.returncode == 1 and "not signed" in unsigned.stdout
    signing.sign(model, signing.load_private(workspace.dir / "secrets" / "model_signing_key"))
    verified = cli("model", "verify", str(model))
    assert verified.returncode == 0 and "verified" in verified.stdout


def test_edgehook_train_signs_with_the_device_key(workspace: Workspace, tmp_path: Path) -> None:
    synthetic.write_npz(tmp_path / "data", *synthetic.make(per_class=20, size=16))
    result = run_edgehook(
        "train",
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "model"),
        "--epochs",
        "1",
        cwd=workspace.dir,
        config=workspace.config_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    device = signing.load_private(workspace.dir / "secrets" / "model_signing_key")
    signer = signing.verify(tmp_path / "model", [signing.public_text(device.public_key())])
    assert f"signed by {signer.key_id}" in result.stdout
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["device"] and meta["sources"] == [str(tmp_path / "data")]


def test_model_verify_takes_an_artifact_name(
    model_dir: Path, tmp_path: Path, workspace: Workspace
) -> None:
    model = copy_of(model_dir, tmp_path)
    signing.sign(model, signing.load_private(workspace.dir / "secrets" / "model_signing_key"))
    publish(model, tmp_path / "artifacts", "team/proj/model:v1")
    deploy_config(workspace, tmp_path / "artifacts")
    result = run_edgehook(
        "model",
        "verify",
        "team/proj/model:production",
        cwd=workspace.dir,
        config=workspace.config_path,
        timeout=60,
    )
    assert result.returncode == 0 and "verified: signed by trusted key" in result.stdout
