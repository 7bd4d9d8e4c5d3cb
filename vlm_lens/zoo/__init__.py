"""The zoo: two small *trained* BIQA checkpoints shipped with vlm_lens, and the synthetic world they learned from.

Real VLM weights are gigabytes and often cannot be downloaded; a first run should take seconds on a laptop. The zoo
reproduces the setting of the paper in miniature: LLaVA-format models that look at an image, describe its
degradations in words, and rate its quality with a level word.

- ``zoo:tiny-biqa-one-stage``: trained on image -> "{description} The quality of the image is {level}." at once.
- ``zoo:tiny-biqa-two-stage``: stage 1 image -> description; stage 2 the level from the description only.

Both load like any checkpoint (``vl.load("zoo:tiny-biqa-one-stage")``). The images come from
:func:`synthetic`, a seeded generator of scenes with known degradations and a documented ground-truth MOS, public
because it is just as useful for checking your own model. ``python -m vlm_lens.zoo.train`` reproduces the
checkpoints; ``python -m vlm_lens.zoo.evaluate`` measures them (docs/zoo.md has the numbers).

Example:
    >>> import vlm_lens as vl
    >>> images, labels = vl.zoo.synthetic(2, seed=1)
    >>> m = vl.load("zoo:tiny-biqa-two-stage")
    >>> t = vl.trace(m, images[0], vl.zoo.PROMPTS[0], generate=48)
    >>> t.answer.startswith("the image is")
    True
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import VlmLensError
from .grammar import LEVELS_WORST_FIRST, PROMPTS, describe, level_of, parse
from .synthetic import TYPES, Synthetic, mos, synthetic

__all__ = ["CHECKPOINTS", "LEVELS_WORST_FIRST", "PROMPTS", "TYPES", "Synthetic", "checkpoint_path", "describe",
           "level_of", "mos", "parse", "synthetic"]

_ROOT = Path(__file__).parent / "checkpoints"

#: Name -> what the shipped checkpoint is.
CHECKPOINTS = {
    "tiny-biqa-one-stage": "image -> description + quality level in one answer, trained in one go",
    "tiny-biqa-two-stage": "stage 1 image -> description; stage 2 quality level from the description alone",
}


def checkpoint_path(name: str) -> Path:
    """The folder of a shipped checkpoint (what ``vl.load("zoo:NAME")`` loads).

    Raises:
        VlmLensError: ``name`` is not a zoo checkpoint, or its files are missing from the installation.

    Example:
        >>> checkpoint_path("tiny-biqa-one-stage").name
        'tiny-biqa-one-stage'
    """
    if name not in CHECKPOINTS:
        raise VlmLensError(f"zoo:{name}: no such zoo checkpoint; expected one of "
                           f"{', '.join('zoo:' + n for n in CHECKPOINTS)}.")
    folder = _ROOT / name
    if not (folder / "config.json").exists():
        raise VlmLensError(f"zoo:{name}: {folder} holds no config.json; the installation lacks the package data. "
                           "Reinstall vlm_lens, or rebuild it with `python -m vlm_lens.zoo.train --out DIR` and "
                           "load DIR/" + name + ".")
    return folder
