"""``t.plot``: the figures of one Trace as methods, so that ``t.plot.latent_output()`` reads like the result it draws.

The accessor holds nothing but the trace; each method forwards to the function of the same name in
:mod:`vlm_lens.plot` (whose docstring lists the options) with the trace as first argument.

Example:
    >>> fig = t.plot.topk(k=4, layer_range=(20, 32))               # doctest: +SKIP
    >>> t.plot.attention(path="attention.pdf")                     # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..tracing.record import Trace

__all__ = ["TracePlots"]


class TracePlots:
    """Figures of one trace; see :mod:`vlm_lens.plot` for what each draws."""

    def __init__(self, trace: "Trace") -> None:
        self._trace = trace

    def latent_output(self, **kwargs: Any) -> "Figure":
        """:func:`vlm_lens.plot.latent_output` of this trace."""
        from .latent import latent_output

        return latent_output(self._trace, **kwargs)

    def topk(self, position: int | None = None, **kwargs: Any) -> "Figure":
        """:func:`vlm_lens.plot.topk` of this trace."""
        from .topk import topk

        return topk(self._trace, position, **kwargs)

    def target_words(self, words=None, position: int | None = None, **kwargs: Any) -> "Figure":
        """:func:`vlm_lens.plot.target_words` of this trace (default words: the five IQA levels)."""
        from ..biqa.vocabulary import LEVELS
        from .topk import target_words

        return target_words(self._trace, LEVELS if words is None else words, position, **kwargs)

    def attention(self, query: int | None = None, **kwargs: Any) -> "Figure":
        """:func:`vlm_lens.plot.attention` of this trace."""
        from .attention import attention

        return attention(self._trace, query, **kwargs)

    def attention_mass(self, query: int | None = None, **kwargs: Any) -> "Figure":
        """:func:`vlm_lens.plot.attention_mass` of this trace."""
        from .attention import attention_mass

        return attention_mass(self._trace, query, **kwargs)

    def patch_overlay(self, query: int | None = None, **kwargs: Any) -> "Figure":
        """:func:`vlm_lens.plot.patch_overlay` of this trace."""
        from .attention import patch_overlay

        return patch_overlay(self._trace, query, **kwargs)

    def attention_heads(self, query: int | None = None, **kwargs: Any) -> "Figure":
        """:func:`vlm_lens.plot.attention_heads` of this trace."""
        from .heads import attention_heads

        return attention_heads(self._trace, query, **kwargs)

    def head_mass(self, query: int | None = None, **kwargs: Any) -> "Figure":
        """:func:`vlm_lens.plot.head_mass` of this trace."""
        from .heads import head_mass

        return head_mass(self._trace, query, **kwargs)

    def compare(self, other: "Trace", figure: str = "latent_output", **kwargs: Any) -> "Figure":
        """:func:`vlm_lens.plot.pairs` of this trace (first) and ``other`` (second)."""
        from .pairs import compare

        return compare(self._trace, other, figure, **kwargs)

    def __repr__(self) -> str:
        return ("TracePlots(latent_output, topk, target_words, attention, attention_mass, patch_overlay, "
                "attention_heads, head_mass, compare)")
