"""Clean synthetic scenes: gradients, shapes and textures, normalised so that "clean" has one meaning.

A degradation is only detectable if clean images do not already look degraded. Random scenes vary wildly in
brightness, contrast and colourfulness, so every scene is normalised after it is drawn: its luminance is
stretched so that the 2nd and 98th percentiles sit at 0.05 and 0.95, its mean luminance is moved (by a gamma)
to a value in [0.42, 0.58], and its mean chroma (``|x - Y|``) is scaled to a value in [0.16, 0.30]. Textures are periodic patterns of period
>= 4 pixels, never pixel-level noise, so that sensor noise stays a degradation and not a texture. These are
choices of this toy world, documented in ``docs/zoo.md``; they are what makes the labels learnable.

The scene is drawn at twice the output size and averaged down 2x2, which anti-aliases the shape edges the way
a camera's optics would: edges are sharp but not jagged.

This module must stay numpy + PIL only (it runs at import time of nothing, and in training loops).

Example:
    >>> import numpy as np
    >>> x = scene(np.random.default_rng(0), 64)
    >>> x.shape, x.dtype, bool(0.0 <= x.min() and x.max() <= 1.0)
    ((64, 64, 3), dtype('float32'), True)
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["luminance", "scene"]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def luminance(x: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` RGB in [0, 1] -> ``[H, W]`` luma (ITU-R BT.601 weights)."""
    return x @ _LUMA


def scene(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Draw one clean scene: ``[size, size, 3]`` float32 RGB in [0, 1].

    A gradient background (linear or radial), an optional periodic texture over part of it, and 2 to 6 objects
    (ellipses, rectangles, triangles, stripes), each filled with a flat colour, a gradient or a texture.

    Args:
        rng: The random generator; the scene is a pure function of its state.
        size: Side of the square image in pixels.
    """
    big = 2 * size
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32) / (big - 1)
    canvas = _gradient(rng, xx, yy, _color(rng, 0.15), _color(rng, 0.15))
    if rng.random() < 0.5:
        mask = _mask(rng, big, rng.choice(["rectangle", "ellipse"]), scale=(0.5, 1.0))
        canvas = _blend(canvas, _texture(rng, xx, yy, big), mask)
    for _ in range(int(rng.integers(2, 7))):
        shape = rng.choice(["ellipse", "rectangle", "triangle", "ellipse", "rectangle", "bar"])
        mask = _mask(rng, big, shape, scale=(0.15, 0.6))
        kind = rng.random()
        if kind < 0.55:
            fill = np.broadcast_to(_color(rng, 0.35), canvas.shape)
        elif kind < 0.8:
            fill = _gradient(rng, xx, yy, _color(rng, 0.35), _color(rng, 0.35))
        else:
            fill = _texture(rng, xx, yy, big)
        canvas = _blend(canvas, fill, mask)
    small = canvas.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
    return _normalise(small, rng)


def _color(rng: np.random.Generator, min_saturation: float) -> np.ndarray:
    h, s, v = rng.random(), rng.uniform(min_saturation, 1.0), rng.uniform(0.25, 1.0)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)


def _gradient(rng, xx, yy, c0, c1) -> np.ndarray:
    if rng.random() < 0.7:
        angle = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(angle) + yy * np.sin(angle)
    else:
        cx, cy = rng.uniform(0, 1, 2)
        t = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return (c0 * (1 - t[..., None]) + c1 * t[..., None]).astype(np.float32)


def _texture(rng, xx, yy, big: int) -> np.ndarray:
    """A periodic pattern (stripes, checkerboard or rings) with a period of 4..12 output pixels."""
    period = rng.uniform(8, 24) / big  # in units of the [0, 1] coordinate, at twice the output size
    c0, c1 = _color(rng, 0.3), _color(rng, 0.3)
    kind = rng.integers(3)
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    if kind == 0:
        t = 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
    elif kind == 1:
        t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    else:
        cx, cy = rng.uniform(0, 1, 2)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / period)
    return (c0 * (1 - t[..., None]) + c1 * t[..., None]).astype(np.float32)


def _mask(rng, big: int, shape: str, scale: tuple[float, float]) -> np.ndarray:
    image = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(image)
    w, h = rng.uniform(*scale, 2) * big
    cx, cy = rng.uniform(0.1, 0.9, 2) * big
    box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    if shape == "ellipse":
        draw.ellipse(box, fill=255)
    elif shape == "rectangle":
        draw.rectangle(box, fill=255)
    elif shape == "bar":
        thickness = rng.uniform(0.04, 0.12) * big
        if rng.random() < 0.5:
            draw.rectangle([0, cy - thickness / 2, big, cy + thickness / 2], fill=255)
        else:
            draw.rectangle([cx - thickness / 2, 0, cx + thickness / 2, big], fill=255)
    else:
        points = [tuple(p) for p in rng.uniform(-0.5, 0.5, (3, 2)) * [w, h] * 2 + [cx, cy]]
        draw.polygon(points, fill=255)
    return np.asarray(image, dtype=np.float32) / 255.0


def _blend(canvas: np.ndarray, fill: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None]
    return canvas * (1 - m) + fill * m


def _normalise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stretch luminance to [0.05, 0.95] (2nd/98th percentiles), set mean luminance, set mean chroma."""
    y = luminance(x)
    lo, hi = np.percentile(y, [2, 98])
    x = (x - lo) / max(float(hi - lo), 0.05) * 0.9 + 0.05
    x = np.clip(x, 0.0, 1.0)
    target = rng.uniform(0.42, 0.58)
    for _ in range(3):  # a gamma moves the mean luminance; three rounds land close to the target
        mean = float(luminance(x).mean())
        x = x ** (np.log(target) / np.log(np.clip(mean, 0.02, 0.98)))
    y = luminance(x)[..., None]
    chroma = float(np.abs(x - y).mean())
    x = y + (x - y) * (rng.uniform(0.16, 0.3) / max(chroma, 1e-3))
    return np.clip(x, 0.0, 1.0).astype(np.float32)
