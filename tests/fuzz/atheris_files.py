"""Coverage-guided fuzz targets (atheris) over what arrives as files: a model directory
(what `model verify/install/export` and the predictor read before torch sees a byte) and a
dataset folder (what training scans).

    python -m tests.fuzz.atheris_files model_dir fuzz-corpus/model_dir -max_total_time=600
    python -m tests.fuzz.atheris_files dataset fuzz-corpus/dataset -max_total_time=600

The properties: read_metadata and signing.verify return, or raise JobError (one line), for
any bytes in model.json, model.safetensors and model.sig, any of them a FIFO, a directory
or a link out of the directory (never hang: a FIFO would block a plain open); a model
they accept has printable class names and finite normalisation. scan() returns a Source
whose class names are printable text within MAX_CLASSES, or raises JobError, for any
folder names (bytes that are not UTF-8 included), image bytes and .npz bytes.
tests/fuzz/test_atheris.py runs each for a bounded time.
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import atheris

# Only edgehook's own readers are instrumented: numpy, Pillow and torch (the training
# package imports it) would take minutes to instrument and are not what is under test.
with atheris.instrument_imports(include=["core", "pipeline"]):
    from core.errors import JobError
    from core.names import label_problem
    from pipeline.models import signing
    from pipeline.models.modelfile import read_metadata
    from pipeline.training.datasets import MAX_CLASSES, scan

WORK = Path(tempfile.mkdtemp(prefix="edgehook-fuzz-"))
TRUSTED = "ed25519:" + base64.b64encode(b"k" * 32).decode()
KINDS = ("file", "fifo", "dir", "link_out", "missing")


def _place(path: Path, kind: str, data: bytes) -> None:
    if kind == "file":
        path.write_bytes(data)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
    elif kind == "link_out":
        path.symlink_to("/dev/zero")


def _fresh(name: str) -> Path:
    root = WORK / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    return root


def model_dir(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    root = _fresh("model")
    for name in ("model.json", "model.safetensors", "model.sig"):
        kind = KINDS[provider.ConsumeIntInRange(0, len(KINDS) - 1)]
        _place(root / name, kind, provider.ConsumeBytes(provider.ConsumeIntInRange(0, 4096)))
    try:
        meta = read_metadata(root)
    except JobError as exc:
        assert "\n" not in str(exc), str(exc)
        return
    assert all(label_problem(name) is None for name in meta.classes)
    assert all(math.isfinite(v) for v in (*meta.normalisation["mean"], *meta.normalisation["std"]))
    try:
        signing.verify(root, [TRUSTED])
    except JobError as exc:
        assert "\n" not in str(exc), str(exc)


def dataset(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    root = _fresh("dataset")
    if provider.ConsumeBool():
        (root / "d.npz").write_bytes(provider.ConsumeBytes(provider.remaining_bytes()))
    else:
        for _ in range(provider.ConsumeIntInRange(1, 4)):
            name = provider.ConsumeBytes(provider.ConsumeIntInRange(1, 12)).replace(b"/", b"_")
            if name in (b".", b"..") or b"\0" in name:
                continue
            folder = os.path.join(os.fsencode(root), name)
            os.makedirs(folder, exist_ok=True)
            image = provider.ConsumeBytes(provider.ConsumeIntInRange(0, 512))
            with open(os.path.join(folder, b"a.png"), "wb") as handle:
                handle.write(image)
    try:
        source = scan(root)
    except JobError as exc:
        assert "\n" not in str(exc), str(exc)
        return
    assert len(source.classes) <= MAX_CLASSES
    assert all(label_problem(name) is None for name in source.classes), source.classes


TARGETS = {"model_dir": model_dir, "dataset": dataset}


def seeds(name: str) -> list[bytes]:
    """Starting points: a model.json that reads as metadata, a tiny folder tree."""
    meta = {
        "format": 3,
        "spec": {"arch": "edgehook-cnn", "in_channels": 1, "height": 8, "width": 8},
        "classes": ["a", "b"],
        "normalisation": {"mean": [0.5], "std": [0.2]},
        "engine": "x86",
        "metrics": {},
        "weights_sha256": "0" * 64,
    }
    if name == "model_dir":
        return [b"\x00" + json.dumps(meta).encode(), b"\x01\x02\x03" + b"{" * 200]
    return [b"\x00\x02\x03cat\x10\x89PNG\r\n\x1a\n", b"\x01PK\x03\x04"]


def main() -> None:
    """`NAME [CORPUS_DIR ...] [-libfuzzer_flag=...]`; an empty corpus directory is seeded."""
    name, *flags = sys.argv[1:]
    for directory in (Path(f) for f in flags if not f.startswith("-")):
        directory.mkdir(parents=True, exist_ok=True)
        if not any(directory.iterdir()):
            for index, seed in enumerate(seeds(name)):
                (directory / f"seed-{index}").write_bytes(seed)
    atheris.Setup([sys.argv[0], *flags], TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
