"""Trust is checked where it is used: `model export` and `model install` ask the one signing
policy and load the model in a child before they sign, register or activate anything, and
a registry entry is matched on weights and metadata together (issue 21, item 1)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from core.config import Config
from edgehook.cli import main
from pipeline.models import registry, signing
from pipeline.models.modelfile import save, sha256
from pipeline.models.trust import UNCHECKED, SigningPolicy
from pipeline.training import synthetic
from pipeline.training.datasets import read_dataset
from pipeline.training.train import TrainConfig, train
from tests.conftest import Workspace


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trust")
    synthetic.write_npz(root / "data", *synthetic.make(per_class=20, size=16))
    trained = train(read_dataset(root / "data"), TrainConfig(epochs=1, lr=0.05), log=lambda _: None)
    save(root / "model", trained, sources=["test"])
    return root / "model"


def run(workspace: Workspace, *words: str) -> int:
    return main(["--config", str(workspace.config_path), *words])


def device_signed(workspace: Workspace, source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    key = signing.load_private(workspace.dir / "secrets" / "model_signing_key")
    signing.sign(target, key)
    return target


def rewrite_weights(model: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Change the weights file and keep model.json's digest consistent (what a careless or
    hostile signer would publish), unsigned."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(model / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(model / "model.safetensors"))
    meta = json.loads((model / "model.json").read_text())
    meta["weights_sha256"] = sha256(model / "model.safetensors")
    (model / "model.json").write_text(json.dumps(meta))
    (model / "model.sig").unlink(missing_ok=True)


def test_the_policy_is_built_once_from_the_config(workspace: Workspace) -> None:
    config = workspace.config()
    policy = SigningPolicy.from_config(config)
    own = signing.public_path(workspace.dir / "secrets" / "model_signing_key").read_text().strip()
    assert policy == SigningPolicy((own,), False)
    allowing = Config(**{**config.__dict__, "models": config.models.__class__(allow_unsigned=True)})
    assert SigningPolicy.from_config(allowing).allow_unsigned is True


@pytest.mark.parametrize("damage", ["unsigned", "metadata_changed"])
def test_export_refuses_a_model_that_does_not_verify(
    workspace: Workspace,
    trained_dir: Path,
    tmp_path: Path,
    damage: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = device_signed(workspace, trained_dir, tmp_path / "model")
    if damage == "unsigned":
        (model / "model.sig").unlink()
    else:
        meta = json.loads((model / "model.json").read_text())
        meta["metrics"]["int8_accuracy"] = 1.0
        (model / "model.json").write_text(json.dumps(meta))
    out = tmp_path / "m.onnx"
    code = run(workspace, "model", "export", str(model), "--format", "onnx", "--out", str(out))
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("edgehook: ")
    assert ("not signed" if damage == "unsigned" else "does not match the model's files") in err
    assert not out.exists() and not (tmp_path / "m.onnx.sig").exists()


@pytest.mark.parametrize(
    ("tensor", "value", "reason"),
    [
        ("features.0.0.weight_scales", float("nan"), "weight is malformed"),
        ("features.0.0.weight_scales", -1.0, "weight is malformed"),
        ("quant.scale", float("nan"), "scale is not a positive finite number"),
        ("quant.zero_point", 10**12, "zero_point 1000000000000 is outside 0..255"),
        ("extra.tensor", 1.0, "tensors this model has no place for"),
    ],
)
def test_export_and_install_refuse_numbers_infer_refuses(
    workspace: Workspace,
    trained_dir: Path,
    tmp_path: Path,
    tensor: str,
    value: float,
    reason: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import torch

    model = tmp_path / "model"
    shutil.copytree(trained_dir, model)

    def change(tensors: dict[str, torch.Tensor]) -> None:
        if tensor not in tensors:
            assert tensor == "extra.tensor" or tensor.startswith("features"), sorted(tensors)
            name = (
                tensor
                if tensor == "extra.tensor"
                else next(k for k in tensors if k.endswith(".weight_scales"))
            )
            tensors[name] = torch.full_like(tensors.get(name, torch.ones(1)), value)
            return
        dtype = tensors[tensor].dtype
        tensors[tensor] = torch.full_like(tensors[tensor], value, dtype=dtype)

    rewrite_weights(model, change)
    key = signing.load_private(workspace.dir / "secrets" / "model_signing_key")
    signing.sign(model, key)  # signed by the device: only the load can catch it
    out = tmp_path / "m.onnx"
    assert run(workspace, "model", "export", str(model), "--format", "onnx", "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert reason in err and err.count("\n") == 1
    assert not out.exists()
    assert run(workspace, "model", "install", str(model)) == 1
    err = capsys.readouterr().err
    assert reason in err and err.count("\n") == 1
    assert registry.state(workspace.config().models_dir)["active"] is None


def test_install_matches_weights_and_metadata_together(
    workspace: Workspace, trained_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = device_signed(workspace, trained_dir, tmp_path / "first")
    assert run(workspace, "model", "install", str(first)) == 0
    installed = capsys.readouterr().out
    assert installed.startswith("registered and made active: installed-")
    assert run(workspace, "model", "install", str(first)) == 0
    assert capsys.readouterr().out.startswith("already registered, already active: installed-")
    # The same weights with other metadata (other class names), signed: another model.
    other = tmp_path / "other"
    shutil.copytree(trained_dir, other)
    meta = json.loads((other / "model.json").read_text())
    meta["classes"] = [f"renamed-{c}" for c in meta["classes"]]
    (other / "model.json").write_text(json.dumps(meta))
    device_signed(workspace, other, tmp_path / "other-signed")
    assert run(workspace, "model", "install", str(tmp_path / "other-signed")) == 0
    second = capsys.readouterr().out
    assert second.startswith("registered and made active: installed-") and second != installed
    models_dir = workspace.config().models_dir
    active = registry.active(models_dir)
    assert active is not None
    assert registry.read_metadata(active).classes == meta["classes"]
    assert len(registry.state(models_dir)["history"]) == 1


def test_registry_install_refuses_other_metadata_under_a_registered_name(
    workspace: Workspace, trained_dir: Path, tmp_path: Path
) -> None:
    from core.errors import JobError

    models_dir = workspace.config().models_dir
    registry.install(models_dir, trained_dir, "m", activate=True)
    other = tmp_path / "other"
    shutil.copytree(trained_dir, other)
    meta = json.loads((other / "model.json").read_text())
    meta["sources"] = ["elsewhere"]
    (other / "model.json").write_text(json.dumps(meta))
    with pytest.raises(JobError, match="the weights or the metadata differ"):
        registry.install(models_dir, other, "m", activate=True)


def test_allow_unsigned_is_one_answer(trained_dir: Path) -> None:
    assert SigningPolicy((), allow_unsigned=True).accept(trained_dir) == UNCHECKED


def test_export_to_a_place_it_cannot_write_is_one_line(
    workspace: Workspace, trained_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = device_signed(workspace, trained_dir, tmp_path / "model")
    out = "/proc/edgehook-test/m.onnx"
    assert run(workspace, "model", "export", str(model), "--format", "onnx", "--out", out) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edgehook: ") and "/proc/edgehook-test" in err
    assert "internal error" not in err
