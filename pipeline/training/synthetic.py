"""A small, learnable synthetic image set, written in each layout edgehook accepts.

Class k is a stripe pattern (horizontal, vertical, diagonal, checker...) with noise; a
small CNN learns it in seconds. Used by the tests and the offline demo.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

PATTERNS = ("horizontal", "vertical", "diagonal", "checker")


def make(
    per_class: int = 40,
    size: int = 16,
    channels: int = 1,
    classes: int = 3,
    seed: int = 0,
    *,
    contrast: float = 150.0,
    noise: float = 25.0,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """uint8 images (N, C, H, W), int64 labels, class names. Lower `contrast` and higher
    `noise` make a harder set (contrast 40, noise 45: a few epochs reach about 0.95)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    masks = {
        "horizontal": yy % 4 < 2,
        "vertical": xx % 4 < 2,
        "diagonal": (xx + yy) % 4 < 2,
        "checker": (xx // 2 + yy // 2) % 2 == 0,
    }
    images, labels = [], []
    for label in range(classes):
        mask = masks[PATTERNS[label]]
        for _ in range(per_class):
            shift = rng.integers(0, 4, size=2)
            base = np.roll(mask, tuple(shift), axis=(0, 1)) * contrast + 128.0 - contrast / 2
            image = base[None].repeat(channels, 0) + rng.normal(0, noise, (channels, size, size))
            images.append(np.clip(image, 0, 255).astype(np.uint8))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64), PATTERNS[:classes]


def write_image_folder(
    root: Path, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]
) -> None:
    from PIL import Image

    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / classes[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        array = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        Image.fromarray(array).save(folder / f"{index:05d}.png")


def write_npz(root: Path, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "data.npz", x=images, y=labels, classes=np.asarray(classes))


def write_cifar(
    root: Path, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]
) -> None:
    """CIFAR-10's python layout (3x32x32 images); other shapes are resized by repetition."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rgb = images if images.shape[1] == 3 else images.repeat(3, 1)
    reps = (32 // rgb.shape[2], 32 // rgb.shape[3])
    rgb = np.tile(rgb, (1, 1, *reps))[:, :, :32, :32]
    half = len(rgb) // 2
    for name, part in (("data_batch_1", slice(0, half)), ("test_batch", slice(half, None))):
        batch = {b"data": rgb[part].reshape(len(rgb[part]), -1), b"labels": labels[part].tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(
        pickle.dumps({b"label_names": [c.encode() for c in classes]})
    )
