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
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # Scaled to 8 bits before resizing, as `narrow` decodes a 16-bit PNG: the same
        # pixels whichever way the image arrived.
        image = _eight_bit(image)
    if image.mode == "RGB" and mode == "L" and image.size != (size, size):
        # A colour image for a grey model is resized first: converting it at full size
        # would copy it (1 byte a pixel more for the predictor to hold).
        image = ImageOps.fit(image, (size, size), method=Image.Resampling.BILINEAR)
    # Pillow's convert() to the image's own mode is a full-size copy (40 MB for a 10 MP
    # RGB image); only a different mode needs one.
    pixels = image if image.mode == mode else image.convert(mode)
    if pixels.size != (size, size):
        pixels = ImageOps.fit(pixels, (size, size), method=Image.Resampling.BILINEAR)
    array = np.asarray(pixels, dtype=np.uint8)
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def _eight_bit(image: Any) -> Any:
    """A 16-bit (or 32-bit integer, or float) grey image as 8 bits, scaled by its bit depth
    (a value's top byte: a uniform grey stays that grey, nothing is stretched), in integer
    arithmetic (no float64 copy: 8000x5000 would be a gigabyte)."""
    from PIL import Image

    values = np.asarray(image)
    if image.mode == "F":  # floats: taken as 0..255, as Pillow's own conversion does
        eight = np.clip(values, 0, 255).astype(np.uint8)
    elif image.mode == "I":  # 32-bit integers holding 16-bit samples (PNG in older Pillow)
        eight = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
    else:
        eight = (values.astype(np.uint16, copy=False) >> 8).astype(np.uint8)
    return Image.fromarray(eight)


def narrow(image: Any) -> Any:
    """`image` (opened, not yet loaded), set to decode a 16-bit greyscale PNG straight to
    its top byte: 1 byte a pixel where Pillow would hold 2 (40 MB, not 80, for 8000x5000),
    the same values `fit` takes from the 16-bit image. Anything else is left as it is.

    Pillow offers this only for JPEG (`draft`); for PNG it is the unpacker its plugins pick
    in `_open` (rawmode "L;16B" keeps the high byte), so this sets what a plugin sets."""
    tile = getattr(image, "tile", None) or []
    deep = [t for t in tile if t.codec_name == "zip" and t.args == "I;16B"]
    if image.format == "PNG" and image.mode == "I;16" and len(tile) == len(deep) == 1:
        image._mode = "L"
        image.tile = [tile[0]._replace(args="L;16B")]
    return image


# The formats edgehook decodes: Pillow's other plugins (EPS runs Ghostscript) stay unused.
FORMATS = ("PNG", "JPEG", "PPM", "BMP")


def reduction(image: Any, max_pixels: int | None) -> int:
    """How much an opened image is reduced as it decodes: 1 (not at all), or for a JPEG of
    more than `max_pixels` pixels the least of libjpeg's reductions (2, 4, 8) that brings
    it within them (a phone's photograph serves at a quarter of its pixels); 0 when it stays
    over: refused. A lossless image has no cheaper decode, so it is refused when over."""
    width, height = image.size
    if max_pixels is None or width * height <= max_pixels:
        return 1
    if image.format == "JPEG":
        for scale in (2, 4, 8):
            if -(-width // scale) * -(-height // scale) <= max_pixels:
                return scale
    return 0


def pixels_in(
    data: bytes,
    formats: tuple[str, ...] = FORMATS,
    max_pixels: int | None = None,
) -> int:
    """The pixel count an encoded image decodes to, from its header (a large JPEG as
    `reduction` shrinks it); 0 when it is not one: decode refuses it later, with its
    reason."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=formats) as image:
            width, height = image.size
            scale = reduction(image, max_pixels) or 1
            return -(-int(width) // scale) * -(-int(height) // scale)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return 0


def decode(
    data: bytes,
    size: int,
    channels: int,
    formats: tuple[str, ...] = FORMATS,
    max_pixels: int | None = None,
) -> np.ndarray:
    """An encoded image (PNG, JPEG, netpbm, BMP, or only `formats`) fitted as above;
    ValueError when the bytes are not a readable image of those formats, or decode to more
    than `max_pixels` pixels (checked from the header, before decoding; a larger JPEG
    decodes reduced, see `reduction`)."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=formats) as image:
            width, height = image.size
            scale = reduction(image, max_pixels)
            if scale == 0:
                raise ValueError(f"{width}x{height} is more than {max_pixels} pixels")
            if scale > 1:
                image.draft(image.mode, (max(1, width // scale), max(1, height // scale)))
                # libjpeg reduces both sides alike: a strip thinner than `scale` pixels
                # reduces less than asked, and may still be over.
                if image.size[0] * image.size[1] > max_pixels:
                    raise ValueError(f"{width}x{height} is more than {max_pixels} pixels")
            narrow(image).load()
            return fit(image, size, channels)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a readable image ({type(exc).__name__})") from exc
