"""The words of blind image quality assessment (BIQA), in one place.

Every reading of a BIQA answer — the level a model chose, its Q-Align score, where in the answer it was decided,
what the description and the answer are — depends on the same few constants. They are defined here once, and
everything else (the analyses, the figures, the command line, the zoo's grammar) imports them. This module imports
nothing, so the command line can name them in ``--help`` without loading torch.

Example:
    >>> from vlm_lens.biqa.vocabulary import LEVELS, WEIGHTS, ANSWER_PREFIX
    >>> dict(zip(LEVELS, WEIGHTS))["good"], f"{ANSWER_PREFIX} good."
    (4.0, 'The quality of the image is good.')
"""

from __future__ import annotations

__all__ = ["ANSWER_PREFIX", "ATTENTION_QUERIES", "BIQA_SEGMENTS", "DESCRIBE_PROMPT", "GOOD_POOR", "LEVELS",
           "QALIGN_PROMPT", "WEIGHTS", "WEIGHT_SETS"]

#: Q-Align's five level words, best first.
LEVELS = ("excellent", "good", "fair", "poor", "bad")
#: Q-Align's weights of :data:`LEVELS` on its 1-5 scale.
WEIGHTS = (5.0, 4.0, 3.0, 2.0, 1.0)
#: The named weight sets of the Q-Align score: the 1-5 scale and the 0-1 scale of Q-Align's release.
WEIGHT_SETS = {"1-5": WEIGHTS, "0-1": (1.0, 0.75, 0.5, 0.25, 0.0)}
#: The sentence a Q-Align answer starts with; the level word follows it.
ANSWER_PREFIX = "The quality of the image is"
#: Q-Align's question.
QALIGN_PROMPT = "How would you rate the quality of this image?"
#: A one-stage question: describe, then rate.
DESCRIBE_PROMPT = "Describe the quality of this image, then rate it."
#: The two words of the good/poor score (Q-Bench, Q-Instruct).
GOOD_POOR = ("good", "poor")
#: The segments of a BIQA trace, in display order: the tokens of ``Trace.tokens`` with the response split into the
#: description and the answer (the level sentence); see :mod:`vlm_lens.biqa.answer`.
BIQA_SEGMENTS = ("system", "image", "instruction", "description", "answer")
#: The named positions an attention analysis reads (besides a sequence position): the decision position (whose
#: logits choose the level), the generated level word, the last position; see :mod:`vlm_lens.biqa.attention`.
ATTENTION_QUERIES = ("decision", "level", "last")
