"""Where the quality level sits in a traced answer, and which tokens are description and which are answer.

Every dataset-level analysis (quality score, instability, attention by segment, grounding) and every BIQA figure
needs the same three facts about a sample, and they must agree, so they are defined here once:

**Level position** (``level_pos``): the first *response* position whose token is one of the level words
(``excellent, good, fair, poor, bad`` by default, each a single token in its in-sentence form, see
:func:`vlm_lens.tracing.logit_lens.target_token_ids`). None when nothing was generated or when no level word was
generated.

**Decision position** (``decision_pos``): the position whose logits *decide* the level, i.e. the one every score,
every lens statistic and every BIQA figure reads by default.

- a level word was generated: ``level_pos - 1`` (the position before it);
- nothing was generated and the prompt ends with the answer prefix (Q-Align: the assistant's turn was prefilled
  with "The quality of the image is", so the next token is the level): the last prompt position
  ``prompt_length - 1``; with ``answer_prefix=None`` the caller vouches that the prompt ends where the level comes;
- otherwise None, and :attr:`AnswerLayout.reason` says why: nothing generated and no prefix (the last prompt
  position predicts the start of an answer, "the", not a level), or an answer without a level word. A level is
  never read where it is not decided.

**Segments**. Each position gets one label of :data:`~vlm_lens.biqa.vocabulary.BIQA_SEGMENTS`:

- ``image``, ``instruction``, ``system``: as in ``Trace.tokens`` (system = template tokens);
- ``answer``: the level sentence (not the whole response, which is ``Trace.answer``). It starts where the answer
  prefix ("The quality of the image is") ends right before the level word (or, with nothing generated, at the end
  of the prompt); when the prefix is not there, it starts after the last sentence end (``. ! ?`` or a newline) in
  the response before the level word, or at the response's first token when there is none. It runs to the end of
  the sequence.
- ``description``: the response positions before the answer; with no level word, the whole response.

So for the one-stage answer "noisy and dark . The quality of the image is poor ." the description is
"noisy and dark ." and the answer "The quality of the image is poor ."; for "very blurry but good ." there is no
description and the whole sentence is the answer (grounding still reads the words before the level word).

Example:
    >>> layout = locate(t, LEVELS)                       # doctest: +SKIP
    >>> layout.decision_pos, layout.level                # doctest: +SKIP
    (30, 'poor')
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ..core.errors import VlmLensError
from ..core.spans import Span
from ..tracing.logit_lens import target_token_ids
from .vocabulary import ANSWER_PREFIX, LEVELS

if TYPE_CHECKING:
    from ..tracing.record import Trace

__all__ = ["AnswerLayout", "describe_position", "level_token_ids", "locate", "query_index", "segment_labels",
           "tokenizer_of"]


_SENTENCE_END = re.compile(r"[.!?\n]\s*$")
_LEVEL_IDS: "weakref.WeakKeyDictionary[Any, dict[tuple, list[int]]]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class AnswerLayout:
    """Where the level is in one trace (positions are sequence positions of that trace).

    Attributes:
        decision_pos: The decision position: the one whose logits decide the level; None when the sample has no
            level (see :attr:`reason`).
        level_pos: Position of the generated level word; None when none was generated.
        level: The generated level word, or None.
        answer: Span of the level sentence, or None.
        description: Span of the response before the answer, or None when empty.
        reason: Why there is no decision position (None when there is one).
    """

    decision_pos: int | None
    level_pos: int | None
    level: str | None
    answer: Span | None
    description: Span | None
    reason: str | None = None

    @property
    def has_level(self) -> bool:
        return self.decision_pos is not None


def level_token_ids(tokenizer: Any, levels: Sequence[str]) -> list[int]:
    """Single-token ids of ``levels`` (in-sentence form); refuses duplicates. Cached per tokenizer (every
    analysis asks for every sample)."""
    cache = _LEVEL_IDS.setdefault(tokenizer, {})
    key = tuple(levels)
    if key not in cache:
        ids = target_token_ids(tokenizer, list(levels))
        if len(set(ids)) != len(ids):
            raise VlmLensError(f"levels={list(levels)}: two level words map to the same token ({ids}); pass "
                               "distinct words.")
        cache[key] = ids
    return list(cache[key])


def locate(trace: "Trace", levels: Sequence[str] = LEVELS, answer_prefix: str | None = ANSWER_PREFIX, *,
           tokenizer: Any = None, level_ids: Sequence[int] | None = None) -> AnswerLayout:
    """Find the level word, the decision position, and the answer / description spans of one trace.

    Args:
        trace: A trace (with or without generation).
        levels: The level words.
        answer_prefix: Text that introduces the level (None: none; then a trace without generation is read at its
            last prompt position, as the caller says the prompt ends where the level comes).
        tokenizer: Needed to read the prefix; default the trace's model's.
        level_ids: Token ids of ``levels`` when already known (saves a tokenizer call per sample).

    Example:
        >>> locate(t).decision_pos == t.prompt_length - 1     # prefilled, nothing generated   # doctest: +SKIP
        True
    """
    tokenizer = tokenizer_of(trace, tokenizer)
    ids = trace.tokens["id"].tolist()
    level_ids = list(level_ids) if level_ids is not None else level_token_ids(tokenizer, levels)
    by_id = dict(zip(level_ids, levels))
    n, start = len(ids), trace.prompt_length
    level_pos = next((p for p in range(start, n) if ids[p] in by_id), None)
    if level_pos is None and n > start:  # generated, but no level word
        return AnswerLayout(None, None, None, None, Span(start, n),
                            f"the generated answer holds no level word ({', '.join(levels)})")
    anchor = level_pos if level_pos is not None else start  # the answer ends right before this position
    prefix_start = _prefix_start(ids, anchor, answer_prefix, tokenizer)
    if level_pos is None and answer_prefix and prefix_start is None:  # nothing generated, no prefix to end on
        return AnswerLayout(None, None, None, None, None,
                            f"nothing was generated and the prompt does not end with {answer_prefix!r}: its last "
                            "position predicts the start of an answer, not a level (prefill the answer with that "
                            "text, or generate one)")
    answer_start = prefix_start
    if answer_start is None:
        answer_start = anchor if level_pos is None else _sentence_start(ids, start, level_pos, tokenizer)
    answer_start = max(answer_start, 0)
    answer = Span(answer_start, n) if answer_start < n else None
    description_stop = max(start, answer_start)
    description = Span(start, description_stop) if description_stop > start else None
    decision_pos = level_pos - 1 if level_pos is not None else start - 1
    return AnswerLayout(decision_pos, level_pos, by_id.get(ids[level_pos]) if level_pos is not None else None,
                        answer, description)


def describe_position(trace: "Trace", position: int, layout: AnswerLayout | None = None) -> str:
    """A position in words, for titles and captions: ``"decision position 41 (before 'poor')"``, ``"position 12
    ('quality', instruction)"``.

    Example:
        >>> describe_position(t, locate(t).decision_pos, locate(t))      # doctest: +SKIP
        "decision position 41 (before 'poor')"
    """
    n = len(trace.tokens)
    if layout is not None and position == layout.decision_pos:
        if layout.level_pos is not None:
            return f"decision position {position} (before {layout.level!r})"
        return f"decision position {position} (last prompt position, after the answer prefix)"
    what = "last prompt position" if position == trace.prompt_length - 1 else "position"
    text = str(trace.tokens["text"].iloc[position]).strip() if 0 <= position < n else "?"
    return f"{what} {position} ({text!r})"


def segment_labels(trace: "Trace", layout: AnswerLayout) -> list[str]:
    """One label of :data:`BIQA_SEGMENTS` per position of ``trace`` (see the module docstring)."""
    labels = [s if s in ("image", "instruction") else "system" for s in trace.tokens["segment"].tolist()]
    if layout.description is not None:
        labels[layout.description.slice] = ["description"] * len(layout.description)
    if layout.answer is not None:
        labels[layout.answer.slice] = ["answer"] * len(layout.answer)
    return labels


def tokenizer_of(trace: "Trace", tokenizer: Any = None) -> Any:
    """``tokenizer`` if given, else the tokenizer of the trace's model (refused for traces without a model)."""
    if tokenizer is not None:
        return tokenizer
    if trace.model is None:
        raise VlmLensError("this Trace has no model attached (it was loaded from disk); pass tokenizer= "
                           "(e.g. vl.load(...).adapter.tokenizer) to read its answer.")
    return trace.model.adapter.tokenizer


def query_index(trace: "Trace", position: int) -> int:
    """Index of sequence ``position`` among the trace's query positions (its rows of logits and attention)."""
    where = (trace.query_positions == position).nonzero()
    if not len(where):
        raise VlmLensError(f"position {position} is not among the trace's query positions "
                           f"{trace.query_positions.tolist()[:8]}...; trace with query_positions including it.")
    return int(where[0, 0])


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def _prefix_start(ids: list[int], stop: int, prefix: str | None, tokenizer: Any) -> int | None:
    """Start of the shortest token run ending at ``stop`` that decodes to ``prefix`` (case and spacing aside)."""
    if not prefix:
        return None
    want = _normal(prefix)
    for begin in range(stop - 1, -1, -1):
        text = _normal(tokenizer.decode(ids[begin:stop], skip_special_tokens=True))
        if text == want:
            return begin
        if len(text) > len(want):
            return None
    return None


def _sentence_start(ids: list[int], start: int, level_pos: int, tokenizer: Any) -> int:
    """First position after the last sentence end in ``ids[start:level_pos]`` (``start`` if there is none)."""
    for p in range(level_pos - 1, start - 1, -1):
        if _SENTENCE_END.search(tokenizer.decode(ids[p:p + 1], skip_special_tokens=False)):
            return p + 1
    return start
