"""Where a BIQA figure reads a trace, and how it labels the tokens: the decision position and the BIQA segments.

Why: the question a BIQA figure answers is "what does each layer say, and where does it look, *where the level is
decided*" — the position before the level word, or the last prompt position of a prefilled Q-Align answer
(:mod:`vlm_lens.biqa.answer`). Reading the last prompt position instead shows the model deciding to write "the".
So every figure of one trace (and the report) reads the decision position unless told otherwise, says in its
title which position it shows, and labels tokens with one segment scheme: system / image / instruction /
description / answer.

A trace without a decision position (no level word in the answer, nothing generated after an unprefilled prompt,
or a trace loaded without its model, whose tokenizer finds the level) falls back to the last prompt position, and
the title says so; its response is labelled ``description`` (a response without a level word is all description).

Example:
    >>> r = reading(t)                                          # doctest: +SKIP
    >>> r.position, r.words                                     # doctest: +SKIP
    (41, "decision position 41 (before 'poor')")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..biqa.answer import AnswerLayout, describe_position, locate, segment_labels
from ..core.errors import VlmLensError

if TYPE_CHECKING:
    from ..tracing.record import Trace

__all__ = ["Reading", "reading"]


@dataclass(frozen=True)
class Reading:
    """Where a figure reads one trace.

    Attributes:
        position: The decision position, or the last prompt position when the trace has none.
        words: The position in words, for titles and captions (``"decision position 41 (before 'poor')"``).
        labels: One BIQA segment per sequence position (system, image, instruction, description, answer).
        layout: The answer layout, or None when the trace has no model to find it with.
        decided: Whether ``position`` is a decision position.
    """

    position: int
    words: str
    labels: list[str]
    layout: AnswerLayout | None
    decided: bool

    def describe(self, trace: "Trace", position: int) -> str:
        """Any position of the trace in words (the decision position named as such)."""
        return describe_position(trace, position, self.layout)


def reading(trace: "Trace") -> Reading:
    """The decision position of ``trace`` (or its fallback) and its BIQA segment labels."""
    fallback = trace.prompt_length - 1
    try:
        layout = locate(trace)
    except VlmLensError:  # no tokenizer (a trace loaded without its model): the level cannot be found
        labels = [{"response": "description"}.get(s, s) for s in trace.tokens["segment"].tolist()]
        return Reading(fallback, f"last prompt position {fallback} (no model attached to find the level)", labels,
                       None, False)
    labels = segment_labels(trace, layout)
    if layout.has_level:
        return Reading(layout.decision_pos, describe_position(trace, layout.decision_pos, layout), labels, layout,
                       True)
    why = "no level word in the answer" if len(trace.tokens) > trace.prompt_length else \
        "nothing generated after an unprefilled prompt"
    return Reading(fallback, f"last prompt position {fallback} (no decision position: {why})", labels, layout, False)
