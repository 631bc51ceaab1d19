"""The training pipeline on data the tests make: layouts, QAT, int8, export, safe loading."""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.ao.quantization import FakeQuantizeBase
from torch.nn import BatchNorm2d

from core.errors import JobError
from pipeline.models import registry
from pipeline.models.inference import check_in_fresh_process, predict
from pipeline.models.modelfile import WEIGHTS, load_for_finetune, load_int8, read_metadata, save
from pipeline.nn.model import build, normalise
from pipeline.nn.quantize import backend, fold_bn, freeze_bn, prepare_qat, run
from pipeline.training import phases, synthetic
from pipeline.training.datasets import read_dataset, split
from pipeline.training.loop import Inputs, evaluate
from pipeline.training.train import TrainConfig, Trained, train

WRITERS = {
    "image-folder": synthetic.write_image_folder,
    "npz": synthetic.write_npz,
    "cifar": synthetic.write_cifar,
}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    return synthetic.make(per_class=50, size=16)


@pytest.fixture(scope="module")
def trained(
    data: tuple[np.ndarray, np.ndarray, tuple[str, ...]], tmp_path_factory: pytest.TempPathFactory
) -> Trained:
    root = tmp_path_factory.mktemp("train")
    synthetic.write_npz(root, *data)
    return train(read_dataset(root), TrainConfig(epochs=4, seed=1), log=lambda _: None)


@pytest.mark.parametrize("layout", WRITERS)
def test_each_layout_loads(
    layout: str, tmp_path: Path, data: tuple[np.ndarray, np.ndarray, tuple[str, ...]]
) -> None:
    WRITERS[layout](tmp_path, *data)
    dataset = read_dataset(tmp_path)
    assert dataset.layout == layout
    assert len(dataset) == 150 and len(dataset.classes) == 3
    # the synthetic images are grey, 16 px; CIFAR's batches are always RGB, 32 px
    shape = (3, 32, 32) if layout == "cifar" else (1, 16, 16)
    assert dataset.shape == shape
    images = dataset.read(np.arange(150))
    assert images.dtype == np.uint8 and images.shape == (150, *shape)
    assert np.bincount(dataset.labels).tolist() == [50, 50, 50]


def test_unknown_layout_names_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(JobError, match=r"image-folder tree .* CIFAR-10 .* \.npz"):
        read_dataset(tmp_path)


def test_images_of_any_size_and_mode_are_fitted_to_one_input(tmp_path: Path) -> None:
    from PIL import Image

    sizes = {"a": [(16, 16), (40, 30), (20, 50)], "b": [(24, 24), (30, 40), (64, 32)]}
    for name, shapes in sizes.items():
        (tmp_path / name).mkdir()
        for i, (w, h) in enumerate(shapes):
            mode = "L" if i % 2 else "RGB"
            Image.new(mode, (w, h), 200 if name == "a" else 30).save(tmp_path / name / f"{i}.png")
    dataset = read_dataset(tmp_path)
    assert dataset.shape == (3, 27, 27)  # median short side of 16,30,20,24,30,32; RGB seen
    assert dataset.read([0, 5]).shape == (2, 3, 27, 27)
    assert read_dataset(tmp_path, size=12).shape == (3, 12, 12)
    assert read_dataset(tmp_path, channels=1).shape[0] == 1
    grey = tmp_path / "grey"
    for name in ("x", "y"):
        (grey / name).mkdir(parents=True)
        Image.new("L", (10, 8), 9).save(grey / name / "0.png")
    assert read_dataset(grey).shape == (1, 8, 8)


def test_unreadable_images_are_skipped_counted_and_named(tmp_path: Path) -> None:
    x, y, classes = synthetic.make(per_class=10, size=16)
    synthetic.write_image_folder(tmp_path, x, y, classes)
    first = sorted((tmp_path / classes[0]).iterdir())[0]
    first.write_bytes(b"\x89PNG\r\n\x1a\n not really")  # the header lies
    second = sorted((tmp_path / classes[1]).iterdir())[0]
    second.write_bytes(b"")
    dataset = read_dataset(tmp_path, max_unreadable_share=0.1)
    assert len(dataset) == 28
    assert dataset.skipped == [f"{classes[0]}/{first.name}", f"{classes[1]}/{second.name}"]
    with pytest.raises(JobError) as refused:
        read_dataset(tmp_path, max_unreadable_share=0.05)
    assert str(refused.value) == (
        "2 of 30 images are unreadable (6.7%, above training.max_unreadable_share 0.05); "
        f"the first: {classes[0]}/{first.name}"
    )


def test_decoding_memory_does_not_grow_with_the_number_of_images(tmp_path: Path) -> None:
    import tracemalloc

    """Pixels are never held for more than one image at a time: what grows with the count
    is a path and a label per image, far less than one decoded 64x64 image (4 KB)."""
    peaks = []
    for per_class in (20, 80):
        folder = tmp_path / str(per_class)
        synthetic.write_image_folder(folder, *synthetic.make(per_class=per_class, size=64))
        tracemalloc.start()
        dataset = read_dataset(folder)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert len(dataset) == 3 * per_class
    per_added_image = (peaks[1] - peaks[0]) / (3 * 60)
    assert per_added_image < 1024, peaks


def test_the_class_balance_line(
    data: tuple[np.ndarray, np.ndarray, tuple[str, ...]], tmp_path: Path
) -> None:
    x, y, classes = data
    keep = np.concatenate([np.arange(0, 50), np.arange(50, 60), np.arange(100, 130)])
    synthetic.write_npz(tmp_path, x[keep], y[keep], classes)
    assert read_dataset(tmp_path).balance() == (
        f"class balance: {classes[0]} 50, {classes[1]} 10, {classes[2]} 30 (min 10, max 50)"
    )


def test_a_malicious_cifar_pickle_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": [0]}))
    with pytest.raises(JobError, match="refusing to unpickle"):
        read_dataset(tmp_path)
    assert not marker.exists()


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.array([object()] * 4, dtype=object), y=np.zeros(4))
    with pytest.raises(JobError, match="without pickles"):
        read_dataset(tmp_path)


def test_held_out_split_is_reproducible() -> None:
    first, second = split(100, 0.2, seed=7), split(100, 0.2, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert len(first[1]) == 20 and not set(first[0]) & set(first[1])
    assert not np.array_equal(split(100, 0.2, seed=8)[1], first[1])


def test_training_beats_chance_by_a_wide_margin(trained: Trained) -> None:
    metrics = trained.metrics
    assert metrics["int8_accuracy"] >= 0.9  # chance is 0.33
    assert abs(metrics["int8_accuracy"] - metrics["qat_accuracy"]) <= 0.05
    confusion = np.asarray(metrics["confusion"])
    assert confusion.shape == (3, 3) and confusion.sum() == metrics["held_out"]
    # The calibrated int8 ranges already hold the fp32 accuracy: no QAT epoch is spent.
    assert [e["phase"] for e in metrics["epochs"]] == ["fp32", "fp32", "fp32"]
    assert metrics["qat_accuracy"] >= metrics["fp32_accuracy"] - phases.QAT_TOLERANCE
    assert [row["class"] for row in metrics["per_class"]] == list(trained.classes)
    assert sum(row["support"] for row in metrics["per_class"]) == metrics["held_out"]


def test_real_digits_reach_the_reference_on_images_never_seen(tmp_path: Path) -> None:
    """scikit-learn's 1,797 real 8x8 scans: the default recipe's int8 model against a held
    back fifth (the reference fp32 recipe reaches 99%: benchmarks/bench_accuracy.py)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images * (255 / 16)).round().astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(x))
    train_part, test_part = order[:1400], order[1400:]
    np.savez(tmp_path / "d.npz", x=x[train_part], y=digits.target[train_part])
    trained = train(read_dataset(tmp_path), TrainConfig(), log=lambda _: None)
    test = x[test_part][:, None].astype(np.float32) / 255.0
    predicted = predict(trained.int8, test, trained.normalisation).argmax(1)
    assert (predicted == digits.target[test_part]).mean() >= 0.97


def test_qat_trains_while_the_quantized_model_trails_fp32(
    data: tuple[np.ndarray, np.ndarray, tuple[str, ...]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """QAT's length follows the data: calibrated ranges first, then epochs (at most the last
    quarter) only while the held-out accuracy trails fp32's by more than the tolerance;
    observers frozen after the first epoch. A tolerance no model can meet runs them all."""
    synthetic.write_npz(tmp_path, *data)
    monkeypatch.setattr(phases, "QAT_TOLERANCE", -1.0)
    lines: list[str] = []
    result = train(
        read_dataset(tmp_path), TrainConfig(epochs=8, seed=1, patience=8), log=lines.append
    )
    assert [e["phase"] for e in result.metrics["epochs"]] == ["fp32"] * 6 + ["qat"] * 2
    assert any(line.startswith("qat: calibrated ranges, held-out accuracy") for line in lines)
    qat_lrs = [e["lr"] for e in result.metrics["epochs"] if e["phase"] == "qat"]
    assert max(qat_lrs) <= TrainConfig.lr / 100  # 1% of the fp32 peak
    activation = [
        m
        for name, m in result.qat.named_modules()
        if isinstance(m, FakeQuantizeBase) and "weight_fake_quant" not in name
    ]
    assert activation and all(int(m.observer_enabled) == 0 for m in activation)
    assert result.fp32 is not None and not any(
        isinstance(m, FakeQuantizeBase) for m in result.fp32.modules()
    )


def test_a_plateau_stops_training_early(
    data: tuple[np.ndarray, np.ndarray, tuple[str, ...]], tmp_path: Path
) -> None:
    """Held-out accuracy that stays at its best (a tie is not an improvement) runs out the
    patience: before, every tie restarted it and a plateau trained all its epochs."""
    synthetic.write_npz(tmp_path, *data)
    lines: list[str] = []
    metrics = train(
        read_dataset(tmp_path), TrainConfig(epochs=16, patience=2, seed=0), log=lines.append
    ).metrics
    fp32 = [e for e in metrics["epochs"] if e["phase"] == "fp32"]
    assert "fp32: no better for 2 epochs; stopping early" in lines
    assert len(fp32) < 12  # 12 planned: 16 less the last quarter for QAT
    assert metrics["fp32_accuracy"] == max(e["val_acc"] for e in fp32)


def test_dry_run_trains_one_batch(
    data: tuple[np.ndarray, np.ndarray, tuple[str, ...]], tmp_path: Path
) -> None:
    synthetic.write_npz(tmp_path, *data)
    lines: list[str] = []
    result = train(
        read_dataset(tmp_path), TrainConfig(epochs=5, batch_size=8, dry_run=True), log=lines.append
    )
    assert [e["phase"] for e in result.metrics["epochs"]] == ["fp32", "qat"]
    assert any(line.startswith("fp32 epoch 1/1") for line in lines)
    assert any(line.startswith("qat epoch 1/1") for line in lines)


def test_export_reloads_in_a_fresh_process_and_agrees(trained: Trained, tmp_path: Path) -> None:
    save(tmp_path / "model", trained, sources=["test"])
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "model.json",
        "model.safetensors",
    ]
    expected = predict(trained.int8, trained.held_out, trained.normalisation).argmax(1)
    assert check_in_fresh_process(tmp_path / "model", trained.held_out, expected) == {
        "samples": len(expected),
        "agree": len(expected),
    }
    reloaded, meta = load_int8(tmp_path / "model")
    again = predict(reloaded, trained.held_out, meta.normalisation).argmax(1)
    assert np.array_equal(again, expected)


def test_a_pickle_beside_the_weights_is_refused_and_never_loaded(
    trained: Trained, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    save(model, trained, sources=["test"])
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    (model / "model.pt").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(JobError, match=r"holds model\.pt"):
        load_int8(model)
    assert not marker.exists()


def test_tampered_weights_or_metadata_are_refused(trained: Trained, tmp_path: Path) -> None:
    model = tmp_path / "model"
    save(model, trained, sources=["test"])
    weights = model / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-8] + b"\x00" * 8)
    with pytest.raises(JobError, match="does not match the digest"):
        load_int8(model)
    weights.write_bytes(original)
    meta = json.loads((model / "model.json").read_text())
    meta["spec"]["channels"] = 16  # an architecture the weights do not fit
    (model / "model.json").write_text(json.dumps(meta))
    with pytest.raises(
        JobError, match=r"features\.0\.0\.weight is \(32, 1, 3, 3\), expected \(16, 1, 3, 3\)"
    ):
        load_int8(model)
    meta["spec"]["arch"] = "someone-elses-net"
    (model / "model.json").write_text(json.dumps(meta))
    with pytest.raises(JobError, match="'someone-elses-net' is not one edgehook builds"):
        load_int8(model)


def test_promotion_keeps_the_better_model_and_rolls_back(trained: Trained, tmp_path: Path) -> None:
    models = tmp_path / "models"
    first = tmp_path / "first"
    save(first, trained, sources=["a"])
    assert registry.promote(models, first, "m1", 0.01).promoted
    worse = tmp_path / "worse"
    save(worse, trained, sources=["b"])
    meta = json.loads((worse / "model.json").read_text())
    meta["metrics"]["int8_accuracy"] = trained.metrics["int8_accuracy"] - 0.2
    (worse / "model.json").write_text(json.dumps(meta))
    decision = registry.promote(models, worse, "m2", 0.01)
    assert not decision.promoted and "worse than the active model" in decision.reason
    assert registry.active(models) == models / "m1"
    assert registry.promote(models, first, "m3", 0.01).promoted
    assert registry.rollback(models) == "m1"
    assert registry.active(models) == models / "m1"
    with pytest.raises(JobError, match="no earlier model"):
        registry.rollback(models)
    read_metadata(models / "m3")
    shutil.rmtree(models / "m3")


def _rewrite_weights(model: Path, change: Callable[[dict[str, torch.Tensor]], object]) -> None:
    """Change the saved tensors and keep the metadata's digest in step (as a signer could)."""
    from pipeline.models.modelfile import sha256

    tensors = load_file(str(model / WEIGHTS))
    change(tensors)
    save_file(tensors, str(model / WEIGHTS))
    meta = json.loads((model / "model.json").read_text())
    meta["weights_sha256"] = sha256(model / WEIGHTS)
    (model / "model.json").write_text(json.dumps(meta))


def test_the_model_file_is_int8_and_under_a_third_of_fp32(trained: Trained, tmp_path: Path) -> None:
    save(tmp_path / "model", trained, sources=["test"])
    tensors = load_file(str(tmp_path / "model" / WEIGHTS))
    layers = ("features.0.0", "features.2.0", "features.4.0", "fc")
    assert {tensors[f"{n}.weight"].dtype for n in layers} == {torch.int8}
    assert "fc.scale" not in tensors  # the head's logits stay float (WeightOnlyLinear)
    fp32 = {k: v.contiguous() for k, v in build(trained.spec).state_dict().items()}
    save_file(fp32, str(tmp_path / "fp32.safetensors"))
    ratio = (tmp_path / "model" / WEIGHTS).stat().st_size / (
        tmp_path / "fp32.safetensors"
    ).stat().st_size
    assert ratio <= 0.3


def test_weights_the_model_has_no_place_for_are_refused(trained: Trained, tmp_path: Path) -> None:
    model = tmp_path / "model"
    save(model, trained, sources=["test"])
    _rewrite_weights(model, lambda t: t.update(extra=torch.zeros(1)))
    with pytest.raises(JobError, match=r"no place for: \['extra'\]"):
        load_int8(model)
    _rewrite_weights(model, lambda t: (t.pop("extra"), t.pop("fc.bias")))
    with pytest.raises(JobError, match=r"lack fc\.bias"):
        load_int8(model)
    save(model, trained, sources=["test"])
    _rewrite_weights(model, lambda t: t["features.2.0.weight_scales"].mul_(-1))
    with pytest.raises(JobError, match=r"features\.2\.0\.weight is malformed"):
        load_int8(model)


def test_a_model_trained_for_one_engine_runs_under_the_other(
    data: tuple[np.ndarray, np.ndarray, tuple[str, ...]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """x86 here; qnnpack on a Jetson. A model trained for either runs under the other
    (the layers are packed for the running machine's engine when loaded)."""
    if "qnnpack" not in torch.backends.quantized.supported_engines:
        pytest.skip("this torch build has no qnnpack")
    synthetic.write_npz(tmp_path / "data", *data)
    dataset = read_dataset(tmp_path / "data")
    try:
        for trained_for, runs_on in (("x86", "qnnpack"), ("qnnpack", "x86")):
            monkeypatch.setattr("pipeline.training.train.backend", lambda e=trained_for: e)
            model = train(dataset, TrainConfig(epochs=4, seed=1), log=lambda _: None)
            assert model.engine == trained_for
            save(tmp_path / trained_for, model, sources=["test"])
            torch.backends.quantized.engine = trained_for
            expected = predict(model.int8, model.held_out, model.normalisation).argmax(1)
            monkeypatch.setattr("pipeline.nn.quantize.backend", lambda e=runs_on: e)
            reloaded, meta = load_int8(tmp_path / trained_for)
            assert torch.backends.quantized.engine == runs_on
            got = predict(reloaded, model.held_out, meta.normalisation).argmax(1)
            assert (got == expected).mean() >= 0.95, (trained_for, runs_on)
    finally:
        torch.backends.quantized.engine = backend()


def test_fine_tuning_starts_from_the_saved_model(trained: Trained, tmp_path: Path) -> None:
    save(tmp_path / "model", trained, sources=["test"])
    start, meta, spec = load_for_finetune(tmp_path / "model")
    assert spec == trained.spec
    x = normalise(trained.held_out, meta.normalisation)
    assert torch.allclose(run(start.eval(), x), run(trained.qat.eval(), x), atol=0.05)


def test_batch_norm_is_folded_without_changing_the_function(trained: Trained) -> None:
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in trained.qat.modules())
    torch.manual_seed(0)
    model = prepare_qat(build(trained.spec), trained.engine)
    x = normalise(trained.held_out, trained.normalisation)
    model(x)  # train mode: batch norm and the observers learn something
    before = run(model.eval(), x)
    assert torch.allclose(run(fold_bn(model), x), before, atol=0.05)


def test_evaluating_on_held_out_data_changes_nothing(trained: Trained) -> None:
    images = torch.from_numpy((trained.held_out * 255).round().astype(np.uint8))
    y = torch.from_numpy(np.zeros(len(images), dtype=np.int64))
    state = {k: v.clone() for k, v in trained.qat.state_dict().items()}
    channels = trained.spec.in_channels
    extreme = Inputs(
        {"mean": [0.0] * channels, "std": [0.01] * channels}, torch.device("cpu"), None
    )
    _, confusion = evaluate(trained.qat, [(images, y)], extreme, trained.spec.num_classes)
    assert sum(map(sum, confusion)) == len(images)
    after = trained.qat.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)


@pytest.mark.slow
def test_int8_keeps_the_qat_accuracy_on_a_hard_set(tmp_path: Path) -> None:
    """Low contrast, heavy noise: where quantized logits cost 14 points (0.74 vs 0.88)."""
    synthetic.write_npz(
        tmp_path,
        *synthetic.make(per_class=300, size=32, channels=3, classes=4, contrast=40, noise=45),
    )
    metrics = train(
        read_dataset(tmp_path), TrainConfig(epochs=6, seed=0), log=lambda _: None
    ).metrics
    assert metrics["qat_accuracy"] >= 0.85  # learnable, not trivial: chance is 0.25
    assert abs(metrics["qat_accuracy"] - metrics["int8_accuracy"]) <= 0.01


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_demo_sized_set_trains_well_on_every_seed(seed: int, tmp_path: Path) -> None:
    """120 images, 2 batches an epoch, the default recipe: the fold must use statistics
    measured on the float model (measured through fresh fake quantizers, seeds ended at
    0.33-0.5 before QAT could recover) and re-measured weight ranges."""
    synthetic.write_image_folder(tmp_path, *synthetic.make(per_class=40, size=16, classes=3))
    metrics = train(read_dataset(tmp_path), TrainConfig(seed=seed), log=lambda _: None).metrics
    assert metrics["int8_accuracy"] >= 0.9


def test_freezing_measures_batch_norm_statistics_exactly(trained: Trained) -> None:
    """freeze_bn folds the statistics of everything batch norm saw in its pass over the
    images (every position weighing the same: no trailing average), merged across batches."""
    torch.manual_seed(0)
    x = normalise(trained.held_out, trained.normalisation)
    model = prepare_qat(build(trained.spec), trained.engine)
    model(x[:16])  # batch norm and observers learn something
    batches = [x[start : start + 7] for start in range(0, len(x), 7)]
    reference = copy.deepcopy(model)
    seen: dict[int, list[torch.Tensor]] = {}
    for index, norm in enumerate(m for m in reference.modules() if isinstance(m, BatchNorm2d)):
        norm.momentum = 0.0  # as during freeze_bn's pass: the QAT conv scales by these
        norm.register_forward_pre_hook(
            lambda _m, inputs, index=index: seen.setdefault(index, []).append(inputs[0])
        )
    reference.apply(torch.ao.quantization.disable_observer)
    with torch.no_grad():
        for batch in batches:
            reference(batch)
    frozen = copy.deepcopy(model)
    norms: list[Any] = [m for m in frozen.modules() if isinstance(m, BatchNorm2d)]
    freeze_bn(frozen, iter(batches))
    assert len(norms) == len(seen) == 3
    for index, norm in enumerate(norms):
        inputs = torch.cat(seen[index]).double()
        var, mean = torch.var_mean(inputs, dim=(0, 2, 3))
        assert torch.allclose(norm.running_mean.double(), mean, atol=1e-5)
        assert torch.allclose(norm.running_var.double(), var, rtol=1e-4, atol=1e-6)
