"""Every architecture through the int8 file format and the signature checks; pretrained
weights converted, pinned or signed, and trained from."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import JobError
from core.sections import TrainingConfig
from pipeline.models import signing
from pipeline.models.inference import predict
from pipeline.models.modelfile import load_int8, save, sha256
from pipeline.nn.model import MIN_SIZE, TORCHVISION, ModelSpec, build, head_name
from pipeline.training import synthetic
from pipeline.training.datasets import read_dataset
from pipeline.training.pretrained import import_weights, load_pretrained
from pipeline.training.train import TrainConfig, train


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    synthetic.write_image_folder(root, *synthetic.make(per_class=6, size=64, channels=3, classes=3))
    return root


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("key") / "model_signing_key"
    return path, signing.generate(path)


@pytest.mark.slow
@pytest.mark.parametrize("arch", TORCHVISION)
def test_each_family_round_trips_as_signed_int8(
    arch: str, photos: Path, key: tuple[Path, str], tmp_path: Path
) -> None:
    size = MIN_SIZE[arch]
    dataset = read_dataset(photos, arch=arch, size=size)
    config = TrainConfig(arch=arch, input_size=size, dry_run=True, batch_size=8)
    trained = train(dataset, config, log=lambda _: None)
    assert trained.spec == ModelSpec(arch, 3, size, size, 3)
    model = tmp_path / "model"
    save(model, trained, sources=["test"])
    signer = signing.sign(model, signing.load_private(key[0]))
    assert signing.verify(model, [key[1]]).key_id == signer.key_id
    expected = predict(trained.int8, trained.held_out, trained.normalisation)
    reloaded, meta = load_int8(model)
    assert meta.spec["arch"] == arch
    got = predict(reloaded, trained.held_out, meta.normalisation)
    assert np.array_equal(got, expected)  # the same numbers, exactly
    meta_json = json.loads((model / "model.json").read_text())
    meta_json["spec"]["num_classes"] = 4
    (model / "model.json").write_text(json.dumps(meta_json))
    with pytest.raises(JobError, match="does not match the model's files"):
        signing.verify(model, [key[1]])


def test_shufflenet_refuses_inputs_its_int8_mean_cannot_take() -> None:
    with pytest.raises(JobError, match="sizes edgehook does not build"):
        build(ModelSpec("shufflenet_v2_x0_5", 3, 32, 32, 3))


def _published(arch: str, path: Path, classes: int = 1000) -> dict[str, torch.Tensor]:
    """A weights file as torchvision publishes one: torch.save of a state dict."""
    from torchvision.models import quantization

    torch.manual_seed(3)
    model = getattr(quantization, arch)(weights=None, quantize=False, num_classes=classes)
    state = model.state_dict()
    torch.save(state, path)
    return state


def test_import_weights_converts_a_published_file_and_pins_it(tmp_path: Path) -> None:
    state = _published("mobilenet_v2", tmp_path / "mobilenet_v2.pth")
    out = tmp_path / "mnv2.safetensors"
    digest = import_weights(tmp_path / "mobilenet_v2.pth", "mobilenet_v2", out)
    assert digest == sha256(out)
    tensors = load_pretrained(out, "mobilenet_v2", digest, trusted=[])
    assert torch.equal(tensors["features.0.0.weight"], state["features.0.0.weight"])
    with pytest.raises(JobError, match=r"do not match training\.pretrained_sha256"):
        load_pretrained(out, "mobilenet_v2", "0" * 64, trusted=[])
    with pytest.raises(JobError, match=r"neither pinned .* nor signed"):
        load_pretrained(out, "mobilenet_v2", None, trusted=[])
    with pytest.raises(JobError, match=r"holds weights for 'mobilenet_v2', not 'resnet18'"):
        load_pretrained(out, "resnet18", digest, trusted=[])
    with pytest.raises(
        JobError,
        match=r"do not fit QuantizableResNet: they lack bn1\.bias \(120 missing, 314 unknown\)",
    ):
        import_weights(tmp_path / "mobilenet_v2.pth", "resnet18", tmp_path / "r.safetensors")


def test_import_weights_never_runs_a_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"conv1.weight": Exploit()}))
    with pytest.raises(JobError, match="without running code"):
        import_weights(tmp_path / "evil.pth", "resnet18", tmp_path / "out.safetensors")
    assert not marker.exists()


def test_signed_weights_are_accepted_from_a_trusted_key_only(
    tmp_path: Path, key: tuple[Path, str]
) -> None:
    _published("resnet18", tmp_path / "r.pth")
    out = tmp_path / "r.safetensors"
    import_weights(tmp_path / "r.pth", "resnet18", out)
    signer = signing.sign_file(out, signing.load_private(key[0]))
    assert load_pretrained(out, "resnet18", None, trusted=[key[1]])
    other = signing.generate(tmp_path / "other")
    with pytest.raises(JobError, match=f"signed by key {signer.key_id}, which is not trusted"):
        load_pretrained(out, "resnet18", None, trusted=[other])


def test_training_starts_from_pretrained_weights_with_a_new_head(
    tmp_path: Path, photos: Path
) -> None:
    state = _published("resnet18", tmp_path / "r.pth")
    out = tmp_path / "r.safetensors"
    digest = import_weights(tmp_path / "r.pth", "resnet18", out)
    weights = load_pretrained(out, "resnet18", digest, trusted=[])
    model = build(ModelSpec("resnet18", 3, 32, 32, 3), weights=weights)
    assert torch.equal(model.state_dict()["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    assert head_name(model) == "fc.1" and model.get_submodule("fc.1").out_features == 3
    dataset = read_dataset(photos, arch="resnet18", size=32)
    lines: list[str] = []
    config = TrainConfig(arch="resnet18", input_size=32, dry_run=True, batch_size=8)
    trained = train(dataset, config, log=lines.append, pretrained=weights)
    assert trained.normalisation["mean"] == [0.485, 0.456, 0.406]  # ImageNet's, as published
    assert "from pretrained weights" in lines[0]


def test_the_config_table_and_job_args_make_one_train_config() -> None:
    table = TrainingConfig(arch="resnet18", input_size=96, hflip=True, time_budget_s=600)
    assert TrainConfig.from_settings(table) == TrainConfig(
        arch="resnet18", input_size=96, hflip=True, time_budget_s=600.0
    )
    args = {"arch": "mobilenet_v2", "epochs": 7, "hflip": False, "time_budget": 60, "lr": 0.01}
    assert TrainConfig.from_settings(table, args) == TrainConfig(
        arch="mobilenet_v2", input_size=96, epochs=7, lr=0.01, hflip=False, time_budget_s=60.0
    )


def test_the_train_config_defaults_are_the_settings_declaration() -> None:
    """Every [training] setting keeps its name and default in TrainConfig; the config crosses
    to the child as JSON and comes back equal."""
    declared = {f.name: f.default for f in dataclasses.fields(TrainingConfig)}
    ours = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert {name: ours[name] for name in declared} == declared
    pinned = TrainingConfig(channels="grey", pretrained_file=Path("/w/m.safetensors"))
    config = TrainConfig.from_settings(pinned, {"seed": 3}, device="cpu")
    assert config.in_channels == 1 and config.pretrained_path == Path("/w/m.safetensors")
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(JobError, match="the training config has unknown settings: colour"):
        TrainConfig.from_dict({"colour": "grey"})


def test_pretrained_weights_from_an_artifact_are_checked_like_a_file(tmp_path: Path) -> None:
    """training.pretrained_artifact: the job fetches the artifact (digests verified), takes
    its one .safetensors file and accepts it only under the pin."""
    from pipeline.artifacts import write_local_version
    from pipeline.jobs import ArtifactSource, JobSpec
    from pipeline.runjob import _pretrained

    state = _published("mobilenet_v2", tmp_path / "m.pth")
    out = tmp_path / "mnv2.safetensors"
    digest = import_weights(tmp_path / "m.pth", "mobilenet_v2", out)
    root = tmp_path / "artifacts"
    write_local_version(root, "me/proj/weights:v0", {"mnv2.safetensors": out.read_bytes()})
    write_local_version(root, "me/proj/weights:v1", {"a.safetensors": b"", "b.safetensors": b""})

    def spec(version: str, pin: str) -> JobSpec:
        training = TrainConfig(
            arch="mobilenet_v2", pretrained_artifact=version, pretrained_sha256=pin
        ).to_dict()
        source = ArtifactSource(source="local", local_root=str(root), download_timeout_s=60)
        return JobSpec(1, 1, "retrain", {}, {}, "dev", source, training=training)

    def pretrained(version: str, pin: str, job: str) -> dict[str, torch.Tensor]:
        job_spec = spec(version, pin)  # as retrain reads it: the config rebuilt from the spec
        return _pretrained(job_spec, tmp_path / job, TrainConfig.from_dict(job_spec.training))

    tensors = pretrained("me/proj/weights:v0", digest, "job1")
    assert torch.equal(tensors["features.0.0.weight"], state["features.0.0.weight"])
    with pytest.raises(JobError, match=r"do not match training\.pretrained_sha256"):
        pretrained("me/proj/weights:v0", "0" * 64, "job2")
    with pytest.raises(JobError, match=r"me/proj/weights:v1 must hold exactly one \.safetensors"):
        pretrained("me/proj/weights:v1", digest, "job3")
