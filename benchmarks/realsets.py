"""Real photographs for the accuracy benchmark, from scikit-image's wheel (no download):
crops of textures and scenes under varied lighting, and faces, with the test images from
a region of each photograph (or faces) the trainer never saw.

  textures  brick, grass, gravel (grey): 3 classes, crops at 48 px
  scenes    astronaut, coffee, chelsea, rocket, immunohistochemistry (RGB): 5 classes
  faces     lfw_subset: 100 faces, 100 non-faces at 25 px (the first 80 of each train)

Each crop has a random side (scale), then random gain, gamma, a linear illumination
gradient and sensor noise (lighting), saved as PNG. Photographs are split in space: the
training crops lie left of 60% of the width, the test crops right of it, so no test pixel
was ever in a training image.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

TEXTURES = ("brick", "grass", "gravel")
SCENES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
CUT = 0.6  # the share of each photograph's width the training crops come from
SIZE = 48


def _lit(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The crop under other light: gain, gamma, a gradient across it, noise."""
    x = crop.astype(np.float32) / 255.0
    x = x ** float(rng.uniform(0.6, 1.6)) * float(rng.uniform(0.6, 1.3))
    h, w = x.shape[:2]
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (
        np.cos(angle) * np.linspace(-1, 1, w)[None, :]
        + np.sin(angle) * np.linspace(-1, 1, h)[:, None]
    )
    x = x * (1 + float(rng.uniform(0, 0.4)) * ramp.reshape(h, w, *([1] * (x.ndim - 2))))
    x = x + rng.normal(0, float(rng.uniform(0, 0.04)), x.shape)
    lit: np.ndarray = np.clip(x * 255, 0, 255).astype(np.uint8)
    return lit


def _crop(photo: np.ndarray, test: bool, rng: np.random.Generator) -> np.ndarray:
    """A random square from the photograph's training (left) or test (right) region."""
    h, w = photo.shape[:2]
    left, right = (int(w * CUT), w) if test else (0, int(w * CUT))
    side = int(rng.integers(SIZE, min(h, right - left, 4 * SIZE) + 1))
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(left, right - side + 1))
    return photo[y : y + side, x : x + side]


def _png(image: np.ndarray, size: int | None) -> bytes:
    from PIL import Image

    picture = Image.fromarray(image)
    if size is not None:
        picture = picture.resize((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def _write(
    root: Path, name: str, train: list[tuple[int, bytes]], test: list[tuple[int, bytes]]
) -> tuple[Path, Path]:
    """The training images as an image-folder tree, the test images with labels.npy."""
    data, held = root / name, root / f"{name}-test"
    for k, (label, png) in enumerate(train):
        folder = data / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{k}.png").write_bytes(png)
    held.mkdir(parents=True)
    for k, (_, png) in enumerate(test):
        (held / f"{k}.png").write_bytes(png)
    np.save(held / "labels.npy", np.asarray([label for label, _ in test]))
    return data, held


def photo_crops(
    root: Path, name: str, photos: tuple[str, ...], per_class: int, seed: int
) -> tuple[Path, Path]:
    """Crops of each named skimage photograph, one class per photograph."""
    from skimage import data

    rng = np.random.default_rng(seed)
    train: list[tuple[int, bytes]] = []
    test: list[tuple[int, bytes]] = []
    for label, photo_name in enumerate(photos):
        photo = getattr(data, photo_name)()
        for _ in range(per_class):
            train.append((label, _png(_lit(_crop(photo, False, rng), rng), SIZE)))
        for _ in range(max(20, per_class // 5)):
            test.append((label, _png(_lit(_crop(photo, True, rng), rng), SIZE)))
    return _write(root, name, train, test)


def faces(root: Path, seed: int) -> tuple[Path, Path]:
    """lfw_subset: faces against non-faces, the last 20 of each held back."""
    from skimage import data

    rng = np.random.default_rng(seed)
    images = (data.lfw_subset() * 255).round().astype(np.uint8)  # type: ignore[no-untyped-call]
    train: list[tuple[int, bytes]] = []
    test: list[tuple[int, bytes]] = []
    for label, part in enumerate((images[:100], images[100:])):
        for i, image in enumerate(part):
            (test if i >= 80 else train).append((label, _png(_lit(image, rng), None)))
    return _write(root, "faces", train, test)


def write_all(root: Path, smoke: bool) -> dict[str, tuple[Path, Path]]:
    """Every set of real photographs: {name: (training folder, test folder)}."""
    per_class = 60 if smoke else 510  # 3 x 510 = 1,530 training textures, as in issue 24
    return {
        "textures": photo_crops(root, "textures", TEXTURES, per_class, 1),
        "scenes": photo_crops(root, "scenes", SCENES, per_class // 2, 2),
        "faces": faces(root, 3),
    }
