"""``synthetic(n, seed)``: images with known degradations and their ground truth, for training and sanity checks.

Real IQA data sets carry human opinion scores whose causes are unknown. Here every cause is known: each image is
a random clean scene (:mod:`.scenes`) with randomly drawn degradations (:mod:`.degrade`), and its quality score is
a documented function of those degradations. A model trained on it should name the degradations it sees and rate
accordingly; a model of your own can be checked against it the same way.

Sampling. Six slots (blur, noise, jpeg, exposure, contrast, desaturation) are each degraded with probability 0.3
(exposure is then ``dark`` or ``bright`` with equal odds). A degraded slot draws a severity word uniformly
(slight / moderate / heavy) and a severity inside that third, away from its edges:
``s = (k + U(0.15, 0.85)) / 3`` for ``k`` in {0, 1, 2}. About 12% of the images are clean.

The MOS. ``impairment = sum(weight[d] * s[d])`` with weights blur 1.2, noise 1.0, jpeg 0.9, dark 1.0, bright 1.0,
contrast 0.7, desaturation 0.35; ``MOS = 1 + 4 * exp(-impairment)``: 5 for a clean image, decreasing in every
severity, saturating towards 1 as degradations pile up. Its level word uses five equal bins of [1, 5]
(:func:`.grammar.level_of`), as Q-Align labels its data.

Determinism. Image ``i`` of ``synthetic(n, seed)`` depends only on ``(seed, i)``: ``synthetic(10, 0)`` is the first
ten images of ``synthetic(1000, 0)``. Different seeds give unrelated sets (the zoo trains on seed 0 and is
evaluated on seed 1).

Example:
    >>> import vlm_lens as vl
    >>> images, labels = vl.zoo.synthetic(4, seed=1)
    >>> images[0].size, list(labels.columns[:3])
    ((64, 64), ['index', 'seed', 'blur'])
    >>> labels.loc[0, ["mos", "level"]].tolist()  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image

from ..core.errors import VlmLensError
from .degrade import degrade
from .grammar import answer, describe, level_of
from .scenes import scene

__all__ = ["IMPAIRMENT_WEIGHTS", "TYPES", "Synthetic", "mos", "sample_severities", "synthetic", "synthetic_arrays"]

#: The degradation types, in the order of the label columns.
TYPES = ("blur", "noise", "jpeg", "dark", "bright", "contrast", "desaturation")
#: Weight of each severity in the impairment (the MOS is ``1 + 4 * exp(-impairment)``).
IMPAIRMENT_WEIGHTS = {"blur": 1.2, "noise": 1.0, "jpeg": 0.9, "dark": 1.0, "bright": 1.0, "contrast": 0.7,
                      "desaturation": 0.35}
#: Probability that each slot is degraded.
P_DEGRADED = 0.3
_SLOTS = ("blur", "noise", "jpeg", "exposure", "contrast", "desaturation")


class Synthetic(NamedTuple):
    """A synthetic set: ``images`` (list of 8-bit RGB ``PIL.Image``) and ``labels`` (one row per image).

    ``labels`` columns: ``index`` (int, position in the stream of ``seed``), ``seed``, one severity column per type
    in :data:`TYPES` (float in [0, 1], 0 = absent), ``mos`` (float in [1, 5]), ``level`` (excellent / good / fair /
    poor / bad), ``description`` (the grammar's sentence), ``answer`` (description + quality sentence: what the
    zoo models are trained to say), ``n_degradations`` (int).
    """

    images: list[Image.Image]
    labels: pd.DataFrame


def sample_severities(rng: np.random.Generator) -> dict[str, float]:
    """Draw the severities of one image (see the module docstring for the distribution)."""
    out = dict.fromkeys(TYPES, 0.0)
    for slot in _SLOTS:
        degraded = rng.random() < P_DEGRADED
        k = int(rng.integers(3))
        s = (k + rng.uniform(0.15, 0.85)) / 3.0
        side = rng.random()
        if not degraded:
            continue
        name = slot if slot != "exposure" else ("dark" if side < 0.5 else "bright")
        out[name] = float(s)
    return out


def mos(severities: dict[str, float]) -> float:
    """``1 + 4 * exp(-sum(IMPAIRMENT_WEIGHTS[d] * s[d]))``: 5 when clean, decreasing in every severity."""
    impairment = sum(IMPAIRMENT_WEIGHTS[name] * float(severities.get(name, 0.0)) for name in TYPES)
    return 1.0 + 4.0 * math.exp(-impairment)


def synthetic_arrays(n: int, seed: int = 0, *, size: int = 64, start: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """Like :func:`synthetic`, but the images as one ``[n, size, size, 3]`` uint8 array (for training loops).

    Args:
        n: Number of images.
        seed: Seed of the stream.
        size: Side of the square images in pixels.
        start: Index of the first image in the stream (images ``start .. start + n - 1``).
    """
    for name, value, low in (("n", n, 0), ("size", size, 16), ("start", start, 0)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise VlmLensError(f"{name}={value!r}: expected an integer >= {low}.")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise VlmLensError(f"seed={seed!r}: expected a non-negative integer.")
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    rows = []
    for j in range(n):
        index = start + j
        severities = sample_severities(np.random.default_rng([seed, index, 0]))
        clean = scene(np.random.default_rng([seed, index, 1]), size)
        images[j] = degrade(clean, severities, np.random.default_rng([seed, index, 2]))
        score = mos(severities)
        level = level_of(score)
        description = describe(severities)
        rows.append({"index": index, "seed": seed, **severities, "mos": score, "level": level,
                     "description": description, "answer": answer(description, level),
                     "n_degradations": sum(v > 0 for v in severities.values())})
    columns = ["index", "seed", *TYPES, "mos", "level", "description", "answer", "n_degradations"]
    return images, pd.DataFrame(rows, columns=columns)


def synthetic(n: int, seed: int = 0, *, size: int = 64, start: int = 0) -> Synthetic:
    """Generate ``n`` degraded images with their ground truth.

    Args:
        n: Number of images.
        seed: Seed of the stream; image ``i`` depends only on ``(seed, i)``.
        size: Side of the square images in pixels (the zoo models use 64).
        start: Index of the first image in the stream, to take a later slice of it.

    Returns:
        :class:`Synthetic` ``(images, labels)``.

    Example:
        >>> images, labels = synthetic(8, seed=1)
        >>> labels.level.isin(["excellent", "good", "fair", "poor", "bad"]).all()
        np.True_
    """
    arrays, labels = synthetic_arrays(n, seed, size=size, start=start)
    return Synthetic([Image.fromarray(a) for a in arrays], labels)
