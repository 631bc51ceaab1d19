"""Engines prepared off the serving path (pipeline/models/prepared.py): the plan is built in
a child, signed and bound to the model and its ONNX file (a swapped file is refused), and a
predictor serving through onnxruntime never imports torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.errors import JobError
from pipeline.models import prepared, registry, signing
from pipeline.models.modelfile import save
from pipeline.training.datasets import read_dataset
from pipeline.training.train import TrainConfig, train
from tests.conftest import Workspace, make_workspace

pytestmark = pytest.mark.slow  # trains a model, and prepares its engines in a child with torch


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Path, np.ndarray]:
    """A device with one signed digits model installed and active, its plan prepared."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("prepared")
    data = load_digits()
    x = (data.images * (255 / 16)).round().astype(np.uint8)
    np.savez(root / "d.npz", x=x[:400], y=data.target[:400])
    trained = train(read_dataset(root), TrainConfig(epochs=1, seed=0), log=lambda _: None)
    save(root / "m", trained, sources=["digits"])
    workspace = make_workspace(root / "device")
    config = workspace.config()
    assert config.secrets.model_signing_key_file is not None
    signing.sign(root / "m", signing.load_private(config.secrets.model_signing_key_file))
    registry.install(config.models_dir, root / "m", "m", activate=True)
    prepared.prepare(config.models_dir / "m", config.secrets.model_signing_key_file)
    return workspace, config.models_dir / "m", x[1400:1410]  # never trained on


def trusted(workspace: Workspace) -> list[str]:
    return signing.trusted_keys(workspace.config().secrets.model_signing_key_file, ())


def test_the_plan_measures_each_engine_and_keeps_the_int8_answers(
    device: tuple[Workspace, Path, np.ndarray],
) -> None:
    workspace, model, _ = device
    plan = prepared.load(model, trusted(workspace))
    assert set(plan.measured_ms) >= {"torch-int8", "onnxruntime"}
    assert all(ms > 0 for ms in plan.measured_ms.values())
    assert len(plan.probe_top1) == 8
    assert plan.onnx == model.parent / ".engines" / prepared.model_digest(model) / "model.onnx"
    assert plan.fastest("onnxruntime") == "onnxruntime"
    assert plan.fastest("cuda-fp16") is None  # no CUDA here: skipped, never measured
    assert plan.skipped["tensorrt"] == (
        "TensorRT is not installed (the tensorrt package; JetPack ships it)"
    )


def test_a_swapped_onnx_file_is_refused(
    device: tuple[Workspace, Path, np.ndarray], tmp_path: Path
) -> None:
    workspace, model, _ = device
    plan = prepared.load(model, trusted(workspace))
    assert plan.onnx is not None
    original = plan.onnx.read_bytes()
    try:
        plan.onnx.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(JobError, match=r"model\.onnx does not match the digest its signed"):
            prepared.load(model, trusted(workspace))
    finally:
        plan.onnx.write_bytes(original)
    prepared.load(model, trusted(workspace))


def test_a_plan_signed_by_another_key_or_edited_is_refused(
    device: tuple[Workspace, Path, np.ndarray],
) -> None:
    workspace, model, _ = device
    path = prepared.cache_dir(model) / prepared.PLAN
    original, sidecar = path.read_bytes(), Path(f"{path}.sig").read_bytes()
    try:
        record = json.loads(original)
        record["measured_ms"]["torch-int8"] = 0.001  # an edit to steer the choice
        path.write_text(json.dumps(record))
        with pytest.raises(JobError, match="does not match"):
            prepared.load(model, trusted(workspace))
        signing.sign_file(path, Ed25519PrivateKey.generate())
        with pytest.raises(JobError, match="which is not trusted"):
            prepared.load(model, trusted(workspace))
    finally:
        path.write_bytes(original)
        Path(f"{path}.sig").write_bytes(sidecar)
    prepared.load(model, trusted(workspace))


def test_a_model_without_a_plan_has_none(
    device: tuple[Workspace, Path, np.ndarray], tmp_path: Path
) -> None:
    workspace, model, _ = device
    other = tmp_path / "models" / "m"
    shutil.copytree(model, other)
    with pytest.raises(JobError, match="no prepared engines for m"):
        prepared.load(other, trusted(workspace))


SERVE = """
import json, sys
from pipeline.models.serving import load_active
model = load_active(sys.argv[1], follow=False, engine=sys.argv[2])
images = json.loads(sys.argv[3])
import numpy as np
labels = [p.label for p in model.predict([np.array(i, dtype=np.uint8) for i in images])]
print(json.dumps({"engine": model.model().engine.name, "labels": labels,
                  "torch": sorted(m for m in sys.modules if m.split(".")[0] == "torch")[:3]}))
"""


def test_a_predictor_serving_through_onnxruntime_never_imports_torch(
    device: tuple[Workspace, Path, np.ndarray],
) -> None:
    workspace, _, images = device

    def serve(engine: str) -> dict[str, object]:
        done = subprocess.run(
            [sys.executable, "-c", SERVE, str(workspace.config_path), engine,
             json.dumps(images.tolist())],
            cwd=workspace.dir, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        answer: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
        return answer

    light = serve("onnxruntime")
    assert light["engine"] == "onnxruntime"
    assert light["torch"] == []
    heavy = serve("torch-int8")  # the torch engine, chosen, does load torch
    assert heavy["engine"] == "torch-int8"
    assert heavy["torch"] != []
    ours, torchs = light["labels"], heavy["labels"]
    assert isinstance(ours, list) and isinstance(torchs, list)
    assert sum(a == b for a, b in zip(ours, torchs, strict=True)) >= 9


def test_a_tensorrt_engine_is_keyed_by_model_tensorrt_and_gpu() -> None:
    digest = "ab" * 32
    key = prepared.tensorrt_key(digest, "10.3.0", "Orin (nvgpu)")
    assert key == f"{'ab' * 16}-trt10.3.0-Orin__nvgpu_.engine"
    assert prepared.tensorrt_key(digest, "11.4.0", "Orin (nvgpu)") != key
    assert prepared.tensorrt_key(digest, "10.3.0", "NVIDIA H200") != key
    assert prepared.tensorrt_key("cd" * 32, "10.3.0", "Orin (nvgpu)") != key


def test_doctor_says_which_engines_this_device_runs() -> None:
    from edgehook.doctor import _engines

    assert [str(f) for f in _engines()] == [
        "PASS  engines    this device runs torch-int8, onnxruntime; not cuda-fp16: no CUDA "
        "device; not cuda-fp32: no CUDA device; not tensorrt: TensorRT is not installed "
        "(the tensorrt package; JetPack ships it)"
    ]
