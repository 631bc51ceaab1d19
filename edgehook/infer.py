"""`edgehook infer`: classify images with an int8 model, or measure its speed on this machine.

numpy and torch load with this module: the CLI imports it only for `edgehook infer`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from core import bounded
from core.errors import EdgehookError, JobError
from core.names import printable
from pipeline.models.inference import predict, speed
from pipeline.models.modelfile import load_int8
from pipeline.nn.images import decode
from pipeline.training.datasets import IMAGE_SUFFIXES

MAX_IMAGE_BYTES = 256 << 20


def classify(model_dir: Path, targets: list[Path], top_k: int, as_json: bool) -> int:
    """Print the `top_k` classes of each image (folders are searched for images)."""
    paths = [
        p
        for target in targets
        for p in (
            sorted(q for q in target.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
            if target.is_dir()
            else [target]
        )
    ]
    if not paths:
        raise EdgehookError("no images given")
    model, meta = load_int8(model_dir)
    images = np.stack([_read(p, meta.spec) for p in paths])
    probabilities = predict(model, images, meta.normalisation)
    classes = meta.classes
    for path, row in zip(paths, probabilities, strict=True):
        top = row.argsort()[::-1][:top_k]
        ranked = ", ".join(f"{printable(classes[i])} {row[i]:.3f}" for i in top)
        print(
            json.dumps(
                {"image": str(path), "top": [[classes[i], round(float(row[i]), 4)] for i in top]}
            )
            if as_json
            else f"{printable(str(path))}: {ranked}"
        )
    return 0


def benchmark(model_dir: Path, as_json: bool) -> int:
    model, meta = load_int8(model_dir)
    figures = speed(model, meta.spec, repeats=200)
    if as_json:
        print(json.dumps(figures))
        return 0
    print(f"model {model_dir.name} on this machine (fp32: the same architecture)")
    print(
        f"  batch 1 latency   int8 {figures['int8_batch1_ms']:.3f} ms   "
        f"fp32 {figures['fp32_batch1_ms']:.3f} ms"
    )
    print(
        f"  batch 64 images/s int8 {figures['int8_batch64_per_s']:.0f}   "
        f"fp32 {figures['fp32_batch64_per_s']:.0f}   "
        f"({figures['int8_batch64_per_s'] / figures['fp32_batch64_per_s']:.1f}x)"
    )
    return 0


def _read(path: Path, spec: dict[str, int]) -> Any:
    try:
        # A FIFO or device named as an image is refused, not waited on.
        data = bounded.read_bytes(path, MAX_IMAGE_BYTES)
        pixels = decode(data, spec["height"], spec["in_channels"])
    except bounded.Unreadable as exc:
        raise JobError(f"{path} is not a readable image ({exc})") from exc
    except (OSError, ValueError) as exc:
        raise JobError(f"{path} is not a readable image") from exc
    return pixels.astype("float32") / 255.0
