"""The standard figures of one trace — what ``vlm-lens trace`` writes and what the HTML report embeds — in one list.

Why one home: the command line and the report draw the same set, read at the same position (the decision position
by default, or the one the user chose), and a figure added here appears in both.

Example:
    >>> [name for name, _ in standard_figures(t, targets=["good", "poor"])]       # doctest: +SKIP
    ['latent_output', 'topk', 'target_words', 'attention', 'attention_mass', 'patch_overlay']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from . import trace_data

if TYPE_CHECKING:
    from ..tracing.lens import Lens
    from ..tracing.record import Trace

__all__ = ["standard_figures"]

#: Positions before the chosen one in the latent-output window of :func:`standard_figures` (after it: 3).
BEFORE = 10


def standard_figures(trace: "Trace", *, position: int | None = None, k: int = 5,
                     targets: Sequence[str | int] | None = None,
                     lens: "Lens | None" = None) -> list[tuple[str, Callable[[], Any]]]:
    """``(name, draw)`` for each figure of the trace that its data allows: latent output, top-k, target words (with
    ``targets``), attention, attention mass, patch overlay (spatial image tokens). ``draw()`` returns the Figure,
    read at ``position`` (default: the decision position, else the last prompt position); the lens figures read
    the layers through ``lens`` (None: the logit lens)."""
    from .attention import attention, attention_mass, patch_overlay
    from .latent import latent_output
    from .topk import target_words, topk

    at = None if position is None else trace_data.resolve(trace, position)
    has_lens, has_attention = trace.model is not None, trace.attention is not None
    spatial = any(span.layout for span in trace.image_spans)
    n = len(trace.tokens)
    window = "decision" if at is None else list(range(max(0, at - BEFORE), min(n, at + 4)))
    wanted: list[tuple[str, Callable[[], Any]]] = []
    if has_lens:
        wanted += [("latent_output", lambda: latent_output(trace, positions=window, lens=lens)),
                   ("topk", lambda: topk(trace, at, k=k, lens=lens))]
        if targets:
            wanted.append(("target_words", lambda: target_words(trace, list(targets), at, lens=lens)))
    if has_attention:
        wanted += [("attention", lambda: attention(trace, at)), ("attention_mass", lambda: attention_mass(trace, at))]
        if spatial:
            wanted.append(("patch_overlay", lambda: patch_overlay(trace, at)))
    return wanted
