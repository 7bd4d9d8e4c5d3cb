"""Turning what users call "an image" into an RGB ``PIL.Image``.

Users pass paths (``str`` / ``Path``), PIL images of any mode, or ``numpy`` arrays. Processors of every family
expect 8-bit RGB, so every input is converted here, once, with the same rules:

- ``L``, ``P``, ``CMYK``, ``LA`` and friends are converted by PIL;
- images with alpha (``RGBA``, ``LA``, ``PA``) are composited on white, not stripped (stripping shows the
  colour of fully transparent pixels, which is arbitrary);
- 16-bit and 32-bit images (``I;16``, ``I``, ``F``) are rescaled from their own bit depth to 0..255.

This module never guesses silently about a file it cannot read: a missing, empty or corrupt file, an image larger
than PIL's decompression-bomb limit, an image without pixels, and a float image holding NaN or infinity each raise
:class:`~vlm_lens.core.errors.ImageError` naming the argument.

Example:
    >>> from PIL import Image
    >>> from vlm_lens.core.images import to_rgb
    >>> to_rgb(Image.new("RGBA", (4, 4), (255, 0, 0, 0))).getpixel((0, 0))
    (255, 255, 255)
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageError

__all__ = ["ImageLike", "load_image", "to_rgb"]

ImageLike = Union[str, Path, Image.Image, np.ndarray]


def load_image(image: ImageLike, *, argument: str = "image") -> Image.Image:
    """Read ``image`` (path, PIL image or HWC/HW array) and return it as 8-bit RGB.

    Args:
        image: A file path, a ``PIL.Image.Image`` of any mode, or a ``uint8``/float array of shape
            ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``.
        argument: The name used for ``image`` in error messages (e.g. ``"images[3]"``).

    Raises:
        ImageError: The file is missing, empty or not an image, or the array has an unusable shape.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.exists():
            raise ImageError(f"{argument}={str(path)!r}: no such file. Check the path (relative paths are "
                             f"resolved against the current directory {Path.cwd()}).")
        if path.is_dir():
            raise ImageError(f"{argument}={str(path)!r} is a directory; pass the path of an image file.")
        if path.stat().st_size == 0:
            raise ImageError(f"{argument}={str(path)!r} is an empty file (0 bytes); it holds no image.")
        try:
            with Image.open(path) as opened:
                opened.load()
                return to_rgb(_checked(opened, argument))
        except Image.DecompressionBombError as err:
            raise ImageError(f"{argument}={str(path)!r} was not decoded: {err} PIL refuses images above "
                             f"PIL.Image.MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS}) pixels. If you trust the file, "
                             "raise that limit before tracing, or downscale the image.") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            if isinstance(err, ImageError):
                raise
            raise ImageError(f"{argument}={str(path)!r} could not be decoded as an image ({err}). "
                             "The file may be truncated or not an image at all.") from None
    if isinstance(image, Image.Image):
        return to_rgb(_checked(image, argument))
    if isinstance(image, np.ndarray):
        return to_rgb(_array_to_pil(image, argument))
    raise ImageError(f"{argument}: expected a file path, a PIL.Image or a numpy array, got "
                     f"{type(image).__name__}.")


def _checked(image: Image.Image, argument: str) -> Image.Image:
    """Refuse images without pixels, and float images holding NaN or infinity (converted, they would become black
    or white pixels without a word)."""
    if image.width == 0 or image.height == 0:
        raise ImageError(f"{argument}: the image is {image.width} x {image.height} pixels; it holds no pixels.")
    if image.mode == "F":
        values = np.asarray(image)
        bad = int((~np.isfinite(values)).sum())
        if bad:
            raise ImageError(f"{argument}: the 32-bit float image holds {bad} NaN or infinite pixel(s); fix or drop "
                             "those pixels first (they have no colour).")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB (alpha composited on white, high bit depths rescaled)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        if image.mode == "F" and array.max(initial=0) <= 1.0:
            top = 1.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def _array_to_pil(array: np.ndarray, argument: str) -> Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageError(f"{argument}: expected an array of shape (H, W), (H, W, 3) or (H, W, 4), got "
                         f"{tuple(array.shape)}. Channels-first arrays must be transposed to channels-last.")
    if array.size == 0:
        raise ImageError(f"{argument}: the array of shape {tuple(array.shape)} holds no pixels.")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating):
            bad = int((~np.isfinite(array)).sum())
            if bad:
                raise ImageError(f"{argument}: the float array holds {bad} NaN or infinite value(s); a pixel needs a "
                                 "value in [0, 1]. Fix or drop those pixels first (np.nan_to_num, or a mask).")
            if array.min() < 0 or array.max() > 1:
                raise ImageError(f"{argument}: a float array must hold values in [0, 1], got range "
                                 f"[{array.min():.3g}, {array.max():.3g}].")
            array = np.round(array * 255.0).astype(np.uint8)
        elif array.dtype == np.uint16:
            array = np.round(array.astype(np.float64) / 65535.0 * 255.0).astype(np.uint8)
        else:
            raise ImageError(f"{argument}: unsupported array dtype {array.dtype}; use uint8, uint16 or float "
                             "in [0, 1].")
    return Image.fromarray(array)
