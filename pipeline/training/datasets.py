"""Datasets from an artifact directory: detect the layout, then decode every image once,
fitted to the model's input size, into a uint8 cache on disk that training reads per batch.

Layouts (the first that matches wins):
  npz           one .npz file with arrays `x` (or `images`) and `y` (or `labels`), and
                optionally `classes`; loaded with allow_pickle=False
  cifar         CIFAR-10's python batches (data_batch_*, test_batch, batches.meta), what the
                original demo logged. They are pickles, and a pickle from the internet can
                run code, so they are read with an unpickler that builds only plain
                containers and numpy arrays and refuses everything else
  image-folder  one sub-folder per class holding images (png, jpg, pgm, ppm, bmp) of any
                sizes and modes; unreadable files are skipped and counted

Memory stays flat in the number of images: an image-folder tree is decoded one file at a
time, and the cache is read with pread (no mapping: mapped pages would count as resident).
"""

from __future__ import annotations

import io
import os
import pickle
import statistics
import tempfile
import weakref
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core import bounded
from core.errors import JobError
from core.names import label_problem
from pipeline.nn.images import fit, narrow
from pipeline.nn.model import AUTO_MAX_SIZE, EDGEHOOK_CNN, MIN_SIZE, TORCHVISION

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".bmp"})
MAX_IMAGES = 200_000
MAX_SIDE = 8192
MAX_NPZ_BYTES = 16 << 30
MAX_BATCH_BYTES = 1 << 30  # one CIFAR python batch is 31 MB
MAX_CLASSES = 1000  # what a model's spec allows (metadata.MAX_CLASSES)
EXPECTED = (
    "an image-folder tree (one folder per class), CIFAR-10 python batches "
    "(data_batch_*), or a .npz with arrays x and y"
)


@dataclass(frozen=True)
class Source:
    """What lies under the artifact's root, not yet decoded: image files or arrays."""

    layout: str
    classes: tuple[str, ...]
    labels: np.ndarray  # int64, (N,)
    paths: list[Path] | None  # image-folder: one file per label
    arrays: np.ndarray | None  # npz / cifar: (N, C, H, W), uint8 or float in [0, 1]
    short_sides: list[int]
    grey: bool  # every image is single-channel
    unreadable: list[str]  # files skipped while scanning (folder/name)

    def auto_size(self, low: int, high: int) -> int:
        """The images' median short side, within [low, high]."""
        return int(min(high, max(low, statistics.median(self.short_sides))))


@dataclass
class Dataset:
    """Decoded images, fitted to one size, in a uint8 cache file, with their labels."""

    cache: int  # the cache file's descriptor (the file is already unlinked)
    labels: np.ndarray
    classes: tuple[str, ...]
    layout: str
    shape: tuple[int, int, int]  # channels, height, width
    mean: list[float]  # per channel, in [0, 1]: for normalisation
    std: list[float]
    skipped: list[str]  # unreadable files, in the order met

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: Any) -> np.ndarray:
        """The images at `index` (uint8, (n, C, H, W)), read from the cache file."""
        record = int(np.prod(self.shape))
        fd = self.cache
        rows = np.asarray(index, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), record), dtype=np.uint8)
        for i, row in enumerate(rows):
            out[i] = np.frombuffer(os.pread(fd, record, int(row) * record), dtype=np.uint8)
        return out.reshape(len(rows), *self.shape)

    def floats(self, index: Any) -> np.ndarray:
        """The images at `index` as float32 in [0, 1]."""
        return self.read(index).astype(np.float32) / 255.0

    def balance(self) -> str:
        """One line: images per class."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        shown = ", ".join(f"{c} {n}" for c, n in zip(self.classes[:20], counts[:20], strict=False))
        more = f", ... ({len(self.classes)} classes)" if len(self.classes) > 20 else ""
        return f"class balance: {shown}{more} (min {counts.min()}, max {counts.max()})"


def scan(root: Path) -> Source:
    """The dataset's layout, labels and image sizes under `root`, or JobError naming what was
    expected. Image files are opened for their headers only. `root` may also be one .npz."""
    if not root.exists():
        raise JobError(f"{root} does not exist")
    if root.is_file() and root.suffix.lower() == ".npz":
        return _from_arrays(*_load_npz(root), "npz")
    npz = sorted(root.rglob("*.npz"))
    if npz:
        return _from_arrays(*_load_npz(npz[0]), "npz")
    batches = sorted(root.rglob("data_batch_*"))
    if batches:
        return _from_arrays(*_load_cifar(batches[0].parent), "cifar")
    folders = [d for d in sorted(root.iterdir()) if d.is_dir()] if root.is_dir() else []
    if len(folders) == 1 and not _images_in(folders[0]):
        folders = [d for d in sorted(folders[0].iterdir()) if d.is_dir()]
    if folders and all(_images_in(d) for d in folders):
        return _scan_folders(folders)
    raise JobError(f"dataset layout not recognised in {root.name}: expected {EXPECTED}")


def read_dataset(
    root: Path,
    arch: str = EDGEHOOK_CNN,
    size: int = 0,
    channels: int = 0,
    max_unreadable_share: float = 0.05,
    workdir: Path | None = None,
) -> Dataset:
    """Scan `root` and decode every image into the cache, fitted (resized, centre-cropped)
    to `size` (0: the median short side, within what `arch` takes) with `channels` (0: 1 if
    every image is grey; the torchvision families always take 3). Unreadable images are
    skipped; more than `max_unreadable_share` of them is an error."""
    source = scan(root)
    size = size or source.auto_size(MIN_SIZE[arch], AUTO_MAX_SIZE[arch])
    channels = 3 if arch in TORCHVISION else channels or (1 if source.grey else 3)
    shape = (channels, size, size)
    # Unlinked at once: the cache lives as long as its descriptor, which the Dataset's
    # finalizer closes.
    cache, name = tempfile.mkstemp(dir=workdir, prefix="edgehook-images-")
    os.unlink(name)
    try:
        sums = np.zeros((2, channels), dtype=np.float64)
        labels, skipped = [], list(source.unreadable)
        for label, image in _decoded(source, skipped):
            pixels = fit(image, size, channels)
            os.write(cache, pixels.tobytes())
            flat = pixels.reshape(channels, -1).astype(np.float64) / 255.0
            sums += (flat.sum(axis=1), np.square(flat).sum(axis=1))
            labels.append(label)
        total = len(source.labels) + len(source.unreadable)
        if skipped and len(skipped) > max_unreadable_share * total:
            raise JobError(
                f"{len(skipped)} of {total} images are unreadable "
                f"({len(skipped) / total:.1%}, above training.max_unreadable_share "
                f"{max_unreadable_share:g}); the first: {skipped[0]}"
            )
        kept = np.asarray(labels, dtype=np.int64)
        _check_labels(kept, source.classes, source.layout)
    except BaseException:
        os.close(cache)
        raise
    pixels_seen = len(kept) * size * size
    mean = sums[0] / pixels_seen
    std = np.sqrt(np.maximum(sums[1] / pixels_seen - mean**2, 1e-12))
    dataset = Dataset(
        cache,
        kept,
        source.classes,
        source.layout,
        shape,
        mean.tolist(),
        np.maximum(std, 1e-3).tolist(),
        skipped,
    )
    weakref.finalize(dataset, os.close, cache)
    return dataset


def split(count: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out indices: a permutation from `seed`, so the split is reproducible."""
    order = np.random.default_rng(seed).permutation(count)
    held = max(1, round(count * holdout))
    return np.sort(order[held:]), np.sort(order[:held])


def _images_in(folder: Path) -> list[Path]:
    # Regular files only: PIL opening a FIFO would wait for a writer forever.
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _scan_folders(folders: list[Path]) -> Source:
    from PIL import Image, UnidentifiedImageError

    paths, labels, sides, unreadable = [], [], [], []
    grey = True
    for label, folder in enumerate(folders):
        for path in _images_in(folder):
            try:
                with Image.open(path) as image:  # the header only
                    width, height, mode = image.width, image.height, image.mode
            except (UnidentifiedImageError, OSError, ValueError):
                unreadable.append(f"{folder.name}/{path.name}")
                continue
            if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
                unreadable.append(f"{folder.name}/{path.name}")
                continue
            grey = grey and mode in ("L", "1", "I;16", "I", "LA", "F")
            paths.append(path)
            labels.append(label)
            sides.append(min(width, height))
    if len(paths) > MAX_IMAGES:
        raise JobError(
            f"image-folder: {len(paths)} images; edgehook trains on at most {MAX_IMAGES}"
        )
    return Source(
        "image-folder",
        _class_names([folder.name for folder in folders], "image-folder: the class folder"),
        np.asarray(labels, dtype=np.int64),
        paths,
        None,
        sides or [0],
        grey,
        unreadable,
    )


def _decoded(source: Source, skipped: list[str]) -> Iterator[tuple[int, Any]]:
    """(label, image) for each readable image: a PIL image (files) or a CHW array."""
    if source.arrays is not None:
        for label, image in zip(source.labels, source.arrays, strict=True):
            yield int(label), image
        return
    from PIL import Image, UnidentifiedImageError

    assert source.paths is not None
    for label, path in zip(source.labels, source.paths, strict=True):
        try:
            with Image.open(path) as image:
                narrow(image).load()
                yield int(label), image
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            skipped.append(f"{path.parent.name}/{path.name}")


def _from_arrays(x: np.ndarray, y: np.ndarray, classes: tuple[str, ...], layout: str) -> Source:
    if len(x) != len(y):
        raise JobError(f"{layout}: {len(x)} images but {len(y)} labels")
    channels, height, width = x.shape[1:]
    if channels not in (1, 3) or not (4 <= height <= MAX_SIDE and 4 <= width <= MAX_SIDE):
        raise JobError(
            f"{layout}: images are {channels}x{height}x{width}; need 1 or 3 "
            f"channels and sides between 4 and {MAX_SIDE}"
        )
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        if x.max(initial=0.0) <= 1.0:
            x = x * 255.0
        x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    y = np.asarray(y).astype(np.int64)
    return Source(layout, classes, y, None, x, [min(height, width)], channels == 1, [])


def _class_names(names: list[str], what: str) -> tuple[str, ...]:
    """Class names as models keep them: printable text (a folder name that is not UTF-8
    arrives with lone surrogates), at most MAX_CLASSES of them; JobError naming the first
    that is not."""
    if len(names) > MAX_CLASSES:
        raise JobError(f"{what}s are {len(names)}; a model has at most {MAX_CLASSES} classes")
    for name in names:
        problem = label_problem(name)
        if problem is not None:
            shown = name.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
            raise JobError(f"{what} {shown[:80]!r} {problem}; rename it")
    return tuple(names)


def _npz_names(names: np.ndarray, file: str) -> tuple[str, ...]:
    if names.ndim != 1 or names.size > MAX_CLASSES or names.dtype.kind not in "US":
        raise JobError(f"{file}: classes must list at most {MAX_CLASSES} names (strings)")
    return tuple(
        n.decode("utf-8", "surrogateescape") if isinstance(n, bytes) else str(n)
        for n in names.tolist()
    )


def _check_labels(y: np.ndarray, classes: tuple[str, ...], layout: str) -> None:
    if not 2 <= len(y) <= MAX_IMAGES:
        raise JobError(f"{layout}: {len(y)} readable images; need between 2 and {MAX_IMAGES}")
    if len(classes) < 2 or y.min() < 0 or y.max() >= len(classes):
        raise JobError(f"{layout}: labels must be 0..{len(classes) - 1} over at least 2 classes")


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    try:
        # Opened here (a regular file, never a FIFO) and closed here, whatever np.load thinks.
        handle = os.fdopen(bounded.open_regular(path, MAX_NPZ_BYTES), "rb")
    except bounded.Unreadable as exc:
        raise JobError(str(exc)) from exc
    try:
        with handle, np.load(handle, allow_pickle=False) as data:
            x = data["x"] if "x" in data else data["images"]
            y = data["y"] if "y" in data else data["labels"]
            classes: tuple[str, ...] = ()
            if "classes" in data:
                classes = _npz_names(data["classes"], path.name)
    except KeyError as exc:
        raise JobError(f"{path.name} needs arrays x (or images) and y (or labels)") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        # a truncated or damaged archive is refused here, not met halfway through training
        why = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise JobError(f"{path.name} is not a readable .npz without pickles ({why})") from exc
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4:
        raise JobError(f"{path.name}: x has shape {x.shape}; expected (N, H, W[, C])")
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        raise JobError(f"{path.name}: y must hold integer class labels")
    # Bounded before any name is made: labels [0, 10**9] would build a billion of them.
    top = len(classes) if classes else MAX_CLASSES
    if y.size and (int(y.min()) < 0 or int(y.max()) >= top):
        raise JobError(
            f"{path.name}: labels run from {int(y.min())} to {int(y.max())}; they must be "
            f"0..{top - 1} ({'one per listed class' if classes else 'the most classes'})"
        )
    classes = classes or tuple(str(i) for i in range(int(y.max()) + 1 if y.size else 0))
    return x, y, _class_names(list(classes), f"{path.name}: the class")


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
        raw = bounded.read_bytes(path, MAX_BATCH_BYTES)
        data = _ArraysOnly(io.BytesIO(raw), encoding="bytes").load()
    except JobError:
        raise
    except bounded.Unreadable as exc:
        raise JobError(str(exc)) from exc
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
            decoded = [
                n.decode("utf-8", "surrogateescape") if isinstance(n, bytes) else str(n)
                for n in names
            ]
            classes = _class_names(decoded, "batches.meta: the class")
    return np.concatenate(xs), np.concatenate(ys), classes
