"""`edgehook model export --target tensorrt`: explicit Q/DQ with every zero point an int8 0,
weights per channel on the output axis, checked without a GPU (onnx's checker and shape
inference, onnxruntime against edgehook's own int8 model on real held-out digits)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.errors import JobError
from pipeline.models import signing
from pipeline.models.inference import predict
from pipeline.models.modelfile import load_int8, save
from pipeline.models.onnxexport import export
from pipeline.training.datasets import read_dataset
from pipeline.training.train import TrainConfig, Trained, train
from tests.conftest import make_workspace, run_edgehook

TRAINED: list[Trained] = []  # the fixture's model in memory, for the affine refusal


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A model trained (default scheme: symmetric) on 1,400 real scans; the rest held out."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    data = load_digits()
    x = (data.images * (255 / 16)).round().astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(x))
    train_part, test_part = order[:1400], order[1400:]
    np.savez(root / "d.npz", x=x[train_part], y=data.target[train_part])
    trained = train(read_dataset(root), TrainConfig(epochs=4, seed=0), log=lambda _: None)
    assert trained.quantization == "symmetric"
    TRAINED[:] = [trained]
    save(root / "model", trained, sources=["digits"])
    return root / "model", x[test_part, None].astype(np.float32) / 255, data.target[test_part]


def test_every_zero_point_is_an_int8_zero_and_onnxruntime_agrees(
    digits: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    import onnx
    import onnxruntime
    from onnx import TensorProto, numpy_helper

    model_dir, x, y = digits
    out = tmp_path / "m.onnx"
    props = export(model_dir, out, target="tensorrt")
    assert props["edgehook.quantization"] == (
        "int8 QDQ for TensorRT (int8 activations, int8 per-channel weights, zero points 0)"
    )
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert [d.dim_param for d in inferred.graph.output[0].type.tensor_type.shape.dim] == [
        "batch",
        "",
    ]
    init = {t.name: t for t in model.graph.initializer}
    constants = {n.output[0]: n.attribute[0].t for n in model.graph.node if n.op_type == "Constant"}
    tensors = {**init, **constants}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) >= 10
    per_channel = 0
    for node in qdq:
        zero_point = tensors[node.input[2]]
        assert zero_point.data_type == TensorProto.INT8, node.name
        assert not numpy_helper.to_array(zero_point).any(), node.name
        scale = numpy_helper.to_array(tensors[node.input[1]])
        if scale.size > 1:  # per channel: only weights, on the output axis
            axis = {a.name: a.i for a in node.attribute}.get("axis", 1)
            assert axis == 0, node.name
            per_channel += 1
    assert per_channel >= 6  # three convs' weights, each quantized then dequantized
    # Normalisation is inside the graph: the input is [0, 1] pixels.
    assert model.graph.input[0].name == "image"
    assert {"Sub", "Div"} <= {n.op_type for n in model.graph.node}

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    onnx_answers = session.run(None, {"image": x})[0].argmax(1)
    int8, meta = load_int8(model_dir)
    int8_answers = predict(int8, x, meta.normalisation).argmax(1)
    assert np.mean(onnx_answers == int8_answers) >= 0.99
    assert abs(np.mean(onnx_answers == y) - np.mean(int8_answers == y)) <= 0.01


def test_an_affine_model_is_refused_by_name(
    digits: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    # The same model recorded as affine: the refusal reads the metadata, nothing more.
    save(tmp_path / "affine", dataclasses.replace(TRAINED[0], quantization="affine"), sources=[])
    with pytest.raises(JobError) as refused:
        export(tmp_path / "affine", tmp_path / "m.onnx", target="tensorrt")
    assert str(refused.value) == (
        "model affine has affine int8 activations, which TensorRT cannot take: retrain it "
        'with [training] quantization = "symmetric", or export --fp32'
    )
    assert not (tmp_path / "m.onnx").exists()


def test_the_cli_writes_and_signs_the_tensorrt_export(
    digits: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    workspace = make_workspace(tmp_path / "device")
    config = workspace.config()
    assert config.secrets.model_signing_key_file is not None
    key = signing.load_private(config.secrets.model_signing_key_file)
    # export verifies its source: a copy of the model, signed by this device's key
    source = tmp_path / "model"
    shutil.copytree(digits[0], source)
    signing.sign(source, key)
    out = tmp_path / "m.onnx"
    done = run_edgehook(
        "model", "export", str(source), "--format", "onnx", "--target", "tensorrt",
        "--out", str(out), config=workspace.config_path, cwd=workspace.dir,
    )  # fmt: skip
    key_id = signing.key_id(signing.public_text(key.public_key()))
    assert (done.returncode, done.stdout.strip()) == (
        0,
        f"wrote {out}: int8 QDQ for TensorRT (int8 activations, int8 per-channel weights, "
        f"zero points 0) (source signed by {key_id}); signed by {key_id} (m.onnx.sig)",
    ), done.stderr
    assert signing.verify_file(out, [signing.public_text(key.public_key())]).key_id == key_id
