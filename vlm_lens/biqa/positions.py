"""The BIQA names of positions an intervention can use: ``"decision"`` and ``"description"``.

Why here: an intervention (:mod:`vlm_lens.tracing.interventions`) names positions by segment (``"image"``) or span,
but the paper's question needs two positions only the BIQA layer can find — where the level word is decided, and
the model's own description before it. The tracing layer offers a registry; ``vlm_lens.biqa.extensions``
registers the two functions below, so that ``vl.knockout("decision", "description", layers)`` works.

What each name means, per forward (:class:`~vlm_lens.tracing.positions.SequenceView`):

- **teacher-forced pass** (the whole sequence): ``"decision"`` is :func:`decision_position` — the position whose
  logits choose the level word (:func:`~vlm_lens.biqa.answer.locate`: the position before the generated level word;
  without generation the last prompt position, Q-Align style); none when no level word was generated.
  ``"description"`` is the response before the level sentence (``locate(...).description``).
- **generation step** (the tokens so far): once the tokens so far end with the answer prefix ("The quality of the
  image is", prefilled or generated) and no level word has been generated yet, the level word is due next: the
  newest position *is* the decision position, and the description is the response before the prefix. After the
  level word, both are what ``locate`` finds. Before the prefix there is no decision position yet, and the
  description is the whole response so far.

So the two agree whenever the level word follows the answer prefix (every Q-Align answer, the zoo's answers): a
knockout at ``"decision"`` acts while the level is generated exactly where the Trace shows it. When they do not
(a level word without the prefix), ``vl.trace`` warns and records it in ``meta["interventions"]``. The words are
those of :mod:`vlm_lens.biqa.vocabulary`; analyses with other level words pass positions as integers.

Example:
    >>> ko = vl.knockout("decision", "description", [2, 3])                              # doctest: +SKIP
    >>> t = vl.trace(m, image, prompt, generate=48, intervene=[ko])                       # doctest: +SKIP
    >>> t.meta["interventions"][0]["resolved"]["queries"] == [decision_position(t)]       # doctest: +SKIP
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from ..core.spans import Span
from ..tracing.positions import SequenceView, resolve_positions
from .answer import _prefix_start, level_token_ids, locate
from .vocabulary import ANSWER_PREFIX, LEVELS

if TYPE_CHECKING:
    from ..tracing.record import Trace

__all__ = ["decision", "decision_position", "description", "positions_of"]


def decision_position(trace: "Trace | SequenceView", levels: Sequence[str] = LEVELS,
                      answer_prefix: str | None = ANSWER_PREFIX, **kwargs: Any) -> int | None:
    """The decision position of a (complete) trace: the one whose logits choose the level word; None without one.

    Every intervention and effect in vlm_lens reaches this position through this function.
    """
    return locate(trace, levels, answer_prefix, **kwargs).decision_pos


def _as_seen(view: SequenceView) -> SequenceView | None:
    """The sequence whose layout a generation step knows (see the module docstring): the tokens so far once the
    level word is generated, the tokens so far + the level word when it is due next, None before that."""
    tokenizer = view.model.adapter.tokenizer
    level_ids = level_token_ids(tokenizer, LEVELS)
    ids = list(view.ids)
    if any(t in level_ids for t in ids[view.prompt_length:]):
        return view
    if _prefix_start(ids, len(ids), ANSWER_PREFIX, tokenizer) is not None:
        return view.extended(level_ids[0])
    return None


def decision(view: SequenceView) -> list[int]:
    """Resolver of ``"decision"`` (see the module docstring)."""
    seen = view if view.complete else _as_seen(view)
    position = None if seen is None else decision_position(seen)
    return [] if position is None or position >= len(view) else [position]


def description(view: SequenceView) -> Span | None:
    """Resolver of ``"description"`` (see the module docstring)."""
    seen = view if view.complete else _as_seen(view)
    span = locate(seen if seen is not None else view).description
    return None if span is None else Span(span.start, min(span.stop, len(view)))


def positions_of(trace: "Trace", name: str, levels: Sequence[str] = LEVELS,
                 answer_prefix: str | None = ANSWER_PREFIX, **kwargs: Any) -> list[int]:
    """Positions of ``name`` in a complete trace, for an analysis with its own level words and prefix:
    ``"decision"`` and ``"description"`` from :func:`~vlm_lens.biqa.answer.locate` with them, any other name as
    interventions resolve it."""
    if name == "decision":
        position = decision_position(trace, levels, answer_prefix, **kwargs)
        return [] if position is None else [position]
    if name == "description":
        span = locate(trace, levels, answer_prefix, **kwargs).description
        return [] if span is None else list(range(span.start, span.stop))
    return resolve_positions((name,), SequenceView.of(trace), name)
