"""The seven degradations of the synthetic world, each a documented function of a severity in (0, 1].

Every degradation maps a severity ``s`` to one physical parameter, linearly, from a clearly visible minimum to
a strong maximum (images are 64x64, so "visible" is judged at that size). They are applied in a fixed order
that follows a camera pipeline: colour and tone first (desaturation, contrast, exposure), then optics (blur),
then the sensor (noise), then storage (JPEG). Contrast acts on luma only, so that it stays distinguishable from
desaturation (a contrast reduction that also scaled chroma looked like both). Underexposure (``dark``) and
overexposure (``bright``) share one slot and never occur together.

=============  ==============================================  ==============================
degradation    what it does (``x`` RGB in [0, 1], ``Y`` luma)   parameter at s -> 0 .. s = 1
=============  ==============================================  ==============================
desaturation   ``Y + (x - Y) * f``                              chroma kept ``f``: 0.5 .. 0
contrast       luma ``m + (Y - m) * f``, chroma kept            contrast kept ``f``: 0.6 .. 0.15
dark           ``x * 2**-e``                                    exposure ``e``: 0.6 .. 2.2 stops
bright         ``clip(x * 2**e)``                               exposure ``e``: 0.5 .. 1.8 stops
blur           Gaussian blur of std ``sigma`` pixels            ``sigma``: 0.8 .. 2.4
noise          ``x + N(0, sigma^2)`` per pixel and channel      ``sigma``: 0.03 .. 0.15 (8 .. 38 / 255)
jpeg           PIL JPEG round trip (4:2:0) at ``quality``       ``quality``: 32 .. 5
=============  ==============================================  ==============================

Numpy and PIL only; no scipy (it is not a runtime dependency).

Example:
    >>> import numpy as np
    >>> from vlm_lens.zoo.scenes import scene
    >>> rng = np.random.default_rng(0)
    >>> out = degrade(scene(rng), {"blur": 0.5, "noise": 0.2}, rng)
    >>> out.shape, out.dtype
    ((64, 64, 3), dtype('uint8'))
"""

from __future__ import annotations

import io
from typing import Mapping

import numpy as np
from PIL import Image

from ..core.errors import VlmLensError
from .scenes import luminance

__all__ = ["DEGRADATIONS", "degrade", "parameter"]

#: The degradations in the order they are applied.
DEGRADATIONS = ("desaturation", "contrast", "dark", "bright", "blur", "noise", "jpeg")

#: Degradation -> (parameter at s -> 0, parameter at s = 1); the parameter is linear in s.
_RANGES = {
    "desaturation": (0.5, 0.0),
    "contrast": (0.6, 0.15),
    "dark": (0.6, 2.2),
    "bright": (0.5, 1.8),
    "blur": (0.8, 2.4),
    "noise": (0.03, 0.15),
    "jpeg": (32.0, 5.0),
}


def parameter(name: str, severity: float) -> float:
    """The physical parameter of degradation ``name`` at ``severity`` (see the module table)."""
    lo, hi = _RANGES[name]
    return lo + (hi - lo) * float(severity)


def degrade(x: np.ndarray, severities: Mapping[str, float], rng: np.random.Generator) -> np.ndarray:
    """Apply the degradations with severity > 0 to a clean float image; return 8-bit RGB.

    Args:
        x: ``[H, W, 3]`` float RGB in [0, 1] (a clean scene).
        severities: Degradation name -> severity in [0, 1]; 0 (or absent) means not applied.
        rng: Random generator for the noise.

    Returns:
        ``[H, W, 3]`` uint8.
    """
    unknown = set(severities) - set(DEGRADATIONS)
    if unknown:
        raise VlmLensError(f"severities: unknown degradation(s) {sorted(unknown)}; expected names from "
                           f"{list(DEGRADATIONS)}.")
    if severities.get("dark", 0) > 0 and severities.get("bright", 0) > 0:
        raise VlmLensError("severities: 'dark' and 'bright' are both > 0; an image is under- or overexposed, "
                           "not both. Set one of them to 0.")
    x = np.asarray(x, dtype=np.float32)
    s = {name: float(severities.get(name, 0.0)) for name in DEGRADATIONS}
    for name, value in s.items():
        if not 0.0 <= value <= 1.0:
            raise VlmLensError(f"severities[{name!r}]={value}: expected a value in [0, 1].")
    if s["desaturation"] > 0:
        y = luminance(x)[..., None]
        x = y + (x - y) * parameter("desaturation", s["desaturation"])
    if s["contrast"] > 0:
        y = luminance(x)
        m = float(y.mean())
        x = x + ((m + (y - m) * parameter("contrast", s["contrast"])) - y)[..., None]
    if s["dark"] > 0:
        x = x * 2.0 ** -parameter("dark", s["dark"])
    if s["bright"] > 0:
        x = np.clip(x * 2.0 ** parameter("bright", s["bright"]), 0.0, 1.0)
    if s["blur"] > 0:
        x = gaussian_blur(x, parameter("blur", s["blur"]))
    if s["noise"] > 0:
        x = x + rng.normal(0.0, parameter("noise", s["noise"]), x.shape).astype(np.float32)
    out = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
    if s["jpeg"] > 0:
        out = jpeg(out, int(round(parameter("jpeg", s["jpeg"]))))
    return out


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a ``[H, W, C]`` float image, edges reflected; kernel radius ``ceil(3 sigma)``."""
    radius = int(np.ceil(3 * sigma))
    taps = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    h, w = x.shape[:2]
    padded = np.pad(x, ((radius, radius), (0, 0), (0, 0)), mode="reflect")
    x = sum(k * padded[i:i + h] for i, k in enumerate(kernel))
    padded = np.pad(x, ((0, 0), (radius, radius), (0, 0)), mode="reflect")
    return sum(k * padded[:, i:i + w] for i, k in enumerate(kernel)).astype(np.float32)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode ``[H, W, 3]`` uint8 with PIL's JPEG at ``quality`` (4:2:0 chroma subsampling)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality, subsampling=2)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB")).copy()
