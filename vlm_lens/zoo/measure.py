"""What one traced answer of a BIQA model says: its description, level, Q-Align score, attention and lens.

Everything here reads a :class:`~vlm_lens.Trace` through the public API (``Trace.tokens``, ``Trace.logits``,
``Trace.attention``, ``Trace.lens_targets``), so it works for the zoo models and for any real checkpoint that answers
in the same "... the quality of the image is {level}." form.

Positions (found by :func:`vlm_lens.answer.locate`, as every analysis of vlm_lens finds them). The *level
position* is the first generated level word; the description ends where the quality sentence starts. The *decision
position* is the one before the level word: its logits choose it, so the Q-Align score, the attention rows and the
logit lens are all read there.

- **Q-Align score**: softmax of the decision position's logits restricted to the five level words, weighted
  5 (excellent) .. 1 (bad), as Q-Align scores.
- **Attention mass**: for each decoder layer, the decision position's attention (mean over heads) summed over
  image tokens, description tokens (response tokens before the quality sentence) and everything else.
- **Logit lens**: the first hidden-state index (0 = decoder input) at which the generated level word is the top-1
  token of the lens at the decision position, and the first index from which it stays top-1 to the end (read
  through the logit lens, or through another lens given as ``lens=``, such as the checkpoint's tuned lens).

Example:
    >>> t = vl.trace(m, image, PROMPTS[0], generate=48)       # doctest: +SKIP
    >>> reading = read(t)                                      # doctest: +SKIP
    >>> reading.level, reading.score                           # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..biqa.answer import locate
from ..biqa.quality import quality as iqa_quality
from ..biqa.vocabulary import ANSWER_PREFIX
from ..tracing.lens import Lens
from ..tracing.record import Trace
from .grammar import LEVEL_WEIGHTS, LEVELS_WORST_FIRST, parse

__all__ = ["MASS_PARTS", "Reading", "read"]

#: The key groups of the attention mass, in the column order of ``Reading.attention``.
MASS_PARTS = ("image", "description", "other")


@dataclass
class Reading:
    """One answer, read.

    Attributes:
        answer: The generated text.
        description: The answer up to the quality sentence.
        degradations: Degradation -> severity word named by the description (:func:`.grammar.parse`).
        level: The generated level word, or None when the answer holds none.
        score: Q-Align score in [1, 5] at the decision position (NaN without a level word).
        level_probs: Probability of each of :data:`.grammar.LEVELS_WORST_FIRST` among the five (NaN without a level word).
        attention: ``[layer, 3]`` attention mass of the decision position on :data:`MASS_PARTS` (mean over
            heads), or None.
        lens_first_top1: First hidden-state index where the level word is the lens's top-1, or None.
        lens_stays_top1: First hidden-state index from which it stays top-1 to the last layer, or None.
        decision: The decision position (the one whose logits choose the level word), or None.
        sentence_start: First position of the quality sentence (the description ends before it), or None.
    """

    answer: str
    description: str
    degradations: dict[str, str]
    level: str | None
    score: float
    level_probs: np.ndarray
    attention: np.ndarray | None
    lens_first_top1: int | None
    lens_stays_top1: int | None
    decision: int | None = None
    sentence_start: int | None = None


def read(trace: Trace, *, lens: "bool | Lens" = True) -> Reading:
    """Read one traced answer (see the module docstring for what is measured where); ``lens``: True for the logit
    lens, a lens (e.g. a :class:`~vlm_lens.TunedLens`) to read the layers through it, False for no lens reading."""
    answer = trace.answer
    layout = locate(trace, LEVELS_WORST_FIRST, ANSWER_PREFIX)
    if not layout.has_level:
        return Reading(answer, answer, parse(answer), None, math.nan, np.full(len(LEVELS_WORST_FIRST), np.nan), None,
                       None, None)
    quality = iqa_quality(trace, LEVELS_WORST_FIRST, [LEVEL_WEIGHTS[w] for w in LEVELS_WORST_FIRST],
                          layout=layout).iloc[0]
    level_pos, decision = layout.level_pos, layout.decision_pos
    sentence_start = layout.answer.start if layout.answer is not None else level_pos
    texts = [t.strip().lower() for t in trace.tokens["text"]]
    description = " ".join(texts[trace.prompt_length:sentence_start])
    probs = np.array([quality[f"p_{w}"] for w in LEVELS_WORST_FIRST], dtype=np.float64)
    score = float(quality["score"])
    row = trace.query_positions.tolist().index(decision)  # quality() has checked it is a query position
    attention = None
    if trace.attention is not None:
        segments = trace.tokens["segment"].to_numpy()
        groups = np.full(len(texts), 2)
        groups[segments == "image"] = 0
        groups[trace.prompt_length:sentence_start] = 1
        rows = trace.attention[:, :, row, :].mean(1).numpy()  # [layer, key]
        attention = np.stack([rows[:, groups == g].sum(1) for g in range(3)], axis=1)
    first = stays = None
    if lens is not False:
        table = trace.lens_targets([layout.level], positions=[decision], lens=None if lens is True else lens)
        top = table.sort_values("layer")["rank"].to_numpy() == 1
        layers = table.sort_values("layer")["layer"].to_numpy()
        if top.any():
            first = int(layers[np.argmax(top)])
            tail = np.flatnonzero(~top)
            stays = int(layers[0]) if not len(tail) else (int(layers[tail[-1] + 1]) if tail[-1] + 1 < len(top) else None)
    return Reading(answer, description, parse(description), layout.level, score, probs, attention, first, stays,
                   decision, sentence_start)

