"""Datasets from an artifact directory: detect the layout, validate it, load it as arrays.

Layouts (the first that matches wins):
  npz           one .npz file with arrays `x` (or `images`) and `y` (or `labels`), and
                optionally `classes`; loaded with allow_pickle=False
  cifar         CIFAR-10's python batches (data_batch_*, test_batch, batches.meta), what the
                original demo logged. They are pickles, and a pickle from the internet can
                run code, so they are read with an unpickler that builds only plain
                containers and numpy arrays and refuses everything else
  image-folder  one sub-folder per class holding images (png, jpg, pgm, ppm, bmp), decoded
                with Pillow; all images must share one size
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import JobError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".bmp"})
MAX_IMAGES = 200_000
MAX_SIDE = 512
EXPECTED = (
    "an image-folder tree (one folder per class), CIFAR-10 python batches "
    "(data_batch_*), or a .npz with arrays x and y"
)


@dataclass(frozen=True)
class Dataset:
    images: np.ndarray  # float32, (N, C, H, W), values in [0, 1]
    labels: np.ndarray  # int64, (N,)
    classes: tuple[str, ...]
    layout: str

    @property
    def shape(self) -> tuple[int, int, int]:
        _, channels, height, width = self.images.shape
        return channels, height, width


def read_dataset(root: Path) -> Dataset:
    """The dataset under `root`, or JobError naming what was expected."""
    npz = sorted(root.rglob("*.npz"))
    if npz:
        return _validated(_load_npz(npz[0]), "npz")
    batches = sorted(root.rglob("data_batch_*"))
    if batches:
        return _validated(_load_cifar(batches[0].parent), "cifar")
    folders = [d for d in sorted(root.iterdir()) if d.is_dir()] if root.is_dir() else []
    if len(folders) == 1 and not _images_in(folders[0]):
        folders = [d for d in sorted(folders[0].iterdir()) if d.is_dir()]
    if folders and all(_images_in(d) for d in folders):
        return _validated(_load_folders(folders), "image-folder")
    raise JobError(f"dataset layout not recognised in {root.name}: expected {EXPECTED}")


def split(count: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out indices: a permutation from `seed`, so the split is reproducible."""
    order = np.random.default_rng(seed).permutation(count)
    held = max(1, round(count * holdout))
    return np.sort(order[held:]), np.sort(order[:held])


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _load_folders(folders: list[Path]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from PIL import Image, UnidentifiedImageError

    images, labels = [], []
    size: tuple[int, int] | None = None
    mode: str | None = None
    for label, folder in enumerate(folders):
        for path in _images_in(folder):
            try:
                with Image.open(path) as image:
                    image.load()
                    if mode is None:
                        mode = "L" if image.mode in ("L", "1", "I;16") else "RGB"
                    pixels = image.convert(mode)
            except (UnidentifiedImageError, OSError) as exc:
                raise JobError(f"{folder.name}/{path.name} is not a readable image") from exc
            if size is None:
                size = pixels.size
            elif pixels.size != size:
                raise JobError(
                    f"{folder.name}/{path.name} is {pixels.size[0]}x{pixels.size[1]}; "
                    f"the other images are {size[0]}x{size[1]} (resize them to match)"
                )
            array = np.asarray(pixels, dtype=np.uint8)
            images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
            labels.append(label)
    return np.stack(images), np.asarray(labels), tuple(folder.name for folder in folders)


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            x = data["x"] if "x" in data else data["images"]
            y = data["y"] if "y" in data else data["labels"]
            classes = tuple(str(c) for c in data["classes"]) if "classes" in data else ()
    except KeyError as exc:
        raise JobError(f"{path.name} needs arrays x (or images) and y (or labels)") from exc
    except (OSError, ValueError) as exc:
        raise JobError(f"{path.name} is not a readable .npz without pickles ({exc})") from exc
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4:
        raise JobError(f"{path.name}: x has shape {x.shape}; expected (N, H, W[, C])")
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        raise JobError(f"{path.name}: y must hold integer class labels")
    classes = classes or tuple(str(i) for i in range(int(y.max()) + 1 if y.size else 0))
    return x, y, classes


class _ArraysOnly(pickle.Unpickler):
    """Builds dicts, lists, bytes and numpy arrays; any other class is refused."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise JobError(
                f"refusing to unpickle {module}.{name}: CIFAR batches hold only "
                "arrays, and anything else in a pickle could run code"
            )
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[Any, Any]:
    try:
        data = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except JobError:
        raise
    except Exception as exc:
        raise JobError(f"{path.name} is not a CIFAR python batch ({type(exc).__name__})") from exc
    if not isinstance(data, dict):
        raise JobError(f"{path.name} is not a CIFAR python batch")
    return data


def _load_cifar(folder: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    xs, ys = [], []
    for path in sorted(folder.glob("data_batch_*")) + sorted(folder.glob("test_batch")):
        batch = _unpickle(path)
        data, labels = batch.get(b"data"), batch.get(b"labels")
        if not isinstance(data, np.ndarray) or labels is None:
            raise JobError(f"{path.name} lacks data or labels")
        xs.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(labels, dtype=np.int64))
    classes: tuple[str, ...] = tuple(str(i) for i in range(10))
    if (folder / "batches.meta").exists():
        names = _unpickle(folder / "batches.meta").get(b"label_names")
        if isinstance(names, list):
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return np.concatenate(xs), np.concatenate(ys), classes


def _validated(parts: tuple[np.ndarray, np.ndarray, tuple[str, ...]], layout: str) -> Dataset:
    x, y, classes = parts
    if len(x) != len(y):
        raise JobError(f"{layout}: {len(x)} images but {len(y)} labels")
    if not 2 <= len(x) <= MAX_IMAGES:
        raise JobError(f"{layout}: {len(x)} images; need between 2 and {MAX_IMAGES}")
    channels, height, width = x.shape[1:]
    if channels not in (1, 3) or not (4 <= height <= MAX_SIDE and 4 <= width <= MAX_SIDE):
        raise JobError(
            f"{layout}: images are {channels}x{height}x{width}; need 1 or 3 "
            f"channels and sides between 4 and {MAX_SIDE}"
        )
    if len(classes) < 2 or y.min() < 0 or y.max() >= len(classes):
        raise JobError(f"{layout}: labels must be 0..{len(classes) - 1} over at least 2 classes")
    images = x.astype(np.float32)
    if x.dtype == np.uint8 or images.max() > 1.0:
        images /= 255.0
    return Dataset(np.ascontiguousarray(images), y.astype(np.int64), classes, layout)
