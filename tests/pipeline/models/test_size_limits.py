"""Model size limits agree (issue 21 item 6): what the spec allows (1,000 classes) trains,
saves, signs, reads back, loads in the limited child and installs; the confusion matrix of
1,000 classes cannot push model.json over its limit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import JobError
from pipeline.models import registry, signing
from pipeline.models.inference import predict
from pipeline.models.loadcheck import check_loads
from pipeline.models.metadata import MAX_CLASSES
from pipeline.models.modelfile import MAX_METADATA_BYTES, METADATA, load_int8, read_metadata, save
from pipeline.training import synthetic
from pipeline.training.datasets import read_dataset
from pipeline.training.train import TrainConfig, train


def test_a_model_of_the_largest_class_count_trains_saves_and_loads(tmp_path: Path) -> None:
    classes = tuple(f"class-{i:04d}" for i in range(MAX_CLASSES))
    per_class = 2
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (MAX_CLASSES * per_class, 8, 8), dtype=np.uint8)
    labels = np.repeat(np.arange(MAX_CLASSES), per_class)
    synthetic.write_npz(tmp_path / "data", images, labels, classes)
    trained = train(
        read_dataset(tmp_path / "data"),
        TrainConfig(epochs=1, stem_width=8, batch_size=256, dry_run=True, augment=False),
        log=lambda _: None,
    )
    assert np.asarray(trained.metrics["confusion"]).shape == (MAX_CLASSES, MAX_CLASSES)

    model = tmp_path / "model"
    save(model, trained, sources=["test"])
    key_path = tmp_path / "key"
    public = signing.generate(key_path)
    signing.sign(model, signing.load_private(key_path))
    size = (model / METADATA).stat().st_size
    assert size < MAX_METADATA_BYTES, size

    meta = read_metadata(model)
    assert meta.classes == list(classes)
    assert signing.verify(model, [public]).public_key == public
    int8, loaded = load_int8(model)
    probabilities = predict(int8, np.zeros((1, 1, 8, 8), dtype=np.float32), loaded.normalisation)
    assert probabilities.shape == (1, MAX_CLASSES)
    check_loads(model)  # the child with the time and memory limit that install and export use
    registry.install(tmp_path / "models", model, "big", activate=True)
    assert registry.active(tmp_path / "models") is not None


def test_the_worst_confusion_matrix_of_the_largest_model_fits_its_metadata() -> None:
    # Every cell a 7-digit count: ten million held-out images in each, which no dataset
    # edgehook reads reaches; compact JSON as modelfile.save writes it.
    worst = [[9_999_999] * MAX_CLASSES for _ in range(MAX_CLASSES)]
    assert len(json.dumps(worst, separators=(",", ":"))) < MAX_METADATA_BYTES


def test_more_classes_than_the_spec_allows_are_refused_in_metadata(tmp_path: Path) -> None:
    from pipeline.models.metadata import ModelMeta

    data = {
        "format": 3,
        "spec": {
            "arch": "edgehook-cnn",
            "in_channels": 1,
            "height": 8,
            "width": 8,
            "num_classes": MAX_CLASSES + 1,
            "channels": 8,
        },
        "classes": [f"c{i}" for i in range(MAX_CLASSES + 1)],
        "normalisation": {"mean": [0.5], "std": [0.25]},
        "engine": "fbgemm",
        "metrics": {},
        "train_config": {},
        "sources": [],
        "torch": "2",
        "created_at": 0.0,
        "device": "d",
        "weights_sha256": "0" * 64,
    }
    with pytest.raises(JobError, match=r"spec.num_classes is not a whole number from 2 to 1000"):
        ModelMeta.from_json(data)
