"""One image fitted to a model's input: the same function for training, `edgehook infer`,
the predictor and the Python API, so a model sees at serving time exactly what it trained on.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def fit(image: Any, size: int, channels: int) -> np.ndarray:
    """uint8 (channels, size, size): the image (a PIL image, or a CHW / HW uint8 array)
    converted to grey or RGB, centre-cropped to a square and resized (Pillow resizes with
    antialiasing, so a large photo is not aliased down)."""
    from PIL import Image, ImageOps

    if isinstance(image, np.ndarray):
        if image.shape == (channels, size, size):
            return np.ascontiguousarray(image, dtype=np.uint8)
        array = image[0] if image.ndim == 3 and image.shape[0] == 1 else image
        if array.ndim == 3:
            array = array.transpose(1, 2, 0)
        image = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    mode = "L" if channels == 1 else "RGB"
    if image.mode in ("I;16", "I", "F") and mode == "L":
        # 16-bit and float scans: scale to 8 bits rather than clip
        values = np.asarray(image, dtype=np.float64)
        span = max(float(values.max() - values.min()), 1e-9)
        image = Image.fromarray(np.uint8(np.rint((values - values.min()) / span * 255)))
    pixels = image.convert(mode)
    if pixels.size != (size, size):
        pixels = ImageOps.fit(pixels, (size, size), method=Image.Resampling.BILINEAR)
    array = np.asarray(pixels, dtype=np.uint8)
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


# The formats edgehook decodes: Pillow's other plugins (EPS runs Ghostscript) stay unused.
FORMATS = ("PNG", "JPEG", "PPM", "BMP")


def decode(
    data: bytes,
    size: int,
    channels: int,
    formats: tuple[str, ...] = FORMATS,
    max_pixels: int | None = None,
) -> np.ndarray:
    """An encoded image (PNG, JPEG, netpbm, BMP, or only `formats`) fitted as above;
    ValueError when the bytes are not a readable image of those formats, or have more than
    `max_pixels` pixels (checked from the header, before decoding)."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=formats) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ValueError(f"{width}x{height} is more than {max_pixels} pixels")
            image.load()
            return fit(image, size, channels)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a readable image ({type(exc).__name__})") from exc
