"""Candidates per layer at one position: the top-k bars (the paper's Figure 3) and target words across layers.

:func:`topk` shows, for each layer, the ``k`` tokens the logit lens ranks highest at one position as bars of their
probabilities, the model's final output token highlighted wherever it appears: one reads off the layer at which
the answer surfaces and what it competes with. :func:`target_words` follows a few chosen words (the five IQA levels
by default) across layers as lines.

Example:
    >>> fig = vl.plot.topk(t, k=4, layer_range=(20, 32))                        # doctest: +SKIP
    >>> fig = vl.plot.target_words(t, ["excellent", "good", "fair", "poor", "bad"])  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from ..biqa.vocabulary import LEVELS
from . import trace_data
from .style import HIGHLIGHT, new_figure, save, style, thin_ticks, token_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..tracing.lens import Lens
    from ..tracing.record import Trace

__all__ = ["LEVELS", "draw_target_words", "draw_topk", "target_words", "topk"]

#: The five rating levels of the IQA literature (Q-Bench, Q-Instruct, Q-Align).


def topk(trace: "Trace", position: int | None = None, *, k: int = 5, layers: Sequence[int] | None = None,
         layer_range: tuple[int, int] | None = None, max_layers: int = 40, max_label: int = 10,
         lens: "Lens | None" = None, path: str | Path | None = None) -> "Figure":
    """Top-``k`` lens candidates per layer at one position, the final output token highlighted.

    Args:
        trace: A Trace with its model attached.
        position: The position (default: the decision position, where the level word is chosen; without one,
            the last prompt position, which predicts the first answer token).
        k: Candidates per layer.
        layers: Hidden-state indices to show; or ``layer_range=(first, last)``, inclusive.
        max_layers: Without ``layers``/``layer_range``, deeper models show every n-th layer (and the last).
        max_label: Longest token text written, in characters.
        lens: None for the logit lens, or a lens of the trace's model (e.g. a :class:`~vlm_lens.TunedLens`).
        path: Also save the figure there.

    Returns:
        The Figure; its Axes is labelled ``"topk"``, y ticks are the layers, x ticks the ranks.

    Example:
        >>> fig = topk(t, k=4, layer_range=(20, 32))                             # doctest: +SKIP
    """
    position = trace_data.default_position(trace) if position is None else trace_data.resolve(trace, position)
    chosen = trace_data.lens_layers(trace, layers, layer_range, most=max_layers)
    table, final_id, final = trace_data.topk_table(trace, position, k, chosen, lens)
    where = trace_data.reading(trace).describe(trace, position)
    with style():
        fig = new_figure(1.2 + 1.45 * k, 1.5 + 0.27 * len(chosen))
        ax = fig.add_subplot()
        draw_topk(ax, table, final_id, max_label=max_label)
        ax.set_title(f"{trace_data.lens_name(lens)} top-{k} at the {where}\n"
                     f"final output {token_label(final, 16)!r} highlighted")
    if path is not None:
        save(fig, path)
    return fig


def draw_topk(ax: "Axes", table: pd.DataFrame, final_id: int | None, *, max_label: int = 10,
              xmax: float | None = None) -> None:
    """Draw a ``layer, rank, token_id, token, prob`` table: one row per layer, one slot per rank, each slot a bar
    of the candidate's probability with the token written on it; bars of ``final_id`` in the highlight colour.
    ``xmax`` sets the probability that fills a slot (default: the largest shown), to share scales across panels."""
    layers = sorted(table["layer"].unique())
    k = int(table["rank"].max())
    top = float(table["prob"].max()) if xmax is None else xmax
    top = top if top > 0 else 1.0
    row = {l: i for i, l in enumerate(layers)}
    for r in table.itertuples(index=False):
        y = row[r.layer]
        width = 0.92 * float(r.prob) / top
        hit = final_id is not None and int(r.token_id) == final_id
        ax.barh(y, width, left=r.rank - 1 + 0.04, height=0.8, color=HIGHLIGHT if hit else "#9ecae1",
                edgecolor="none", gid=f"bar-{r.layer}-{r.rank}")
        ax.text(r.rank - 1 + 0.07, y, f"{token_label(r.token, max_label)} {float(r.prob):.2f}", va="center",
                ha="left", fontsize=6.5, fontweight="bold" if hit else "normal", color="black")
    ax.set_xlim(0, k)
    ax.set_ylim(-0.6, len(layers) - 0.4)
    ax.set_xticks(np.arange(k) + 0.5, [f"rank {i + 1}" for i in range(k)])
    ticks = thin_ticks(len(layers), 40)
    ax.set_yticks(ticks, [str(layers[i]) for i in ticks])
    for x in range(1, k):
        ax.axvline(x, color="#dddddd", linewidth=0.6)
    ax.set_xlabel(f"candidates (bar length: probability, a full slot = {top:.2f})")
    ax.set_ylabel("layer (0 = decoder input)")
    ax.set_label("topk")


def target_words(trace: "Trace", words: Sequence[str | int] = tuple(LEVELS), position: int | None = None, *,
                 layers: Sequence[int] | None = None, value: str = "prob", log: bool = False,
                 lens: "Lens | None" = None, path: str | Path | None = None) -> "Figure":
    """Probability (or rank) of chosen words at every layer, one line per word.

    Args:
        trace: A Trace with its model attached.
        words: Words (each one token) or token ids; default the five IQA levels.
        position: The position (default: the decision position, else the last prompt position).
        layers: Hidden-state indices (default: every kept layer).
        value: ``"prob"`` or ``"rank"`` (1 = most probable; drawn on a log axis, best at the top).
        log: Log-scale the probability axis.
        lens: None for the logit lens, or a lens of the trace's model (e.g. a :class:`~vlm_lens.TunedLens`).
        path: Also save the figure there.

    Returns:
        The Figure; its Axes is labelled ``"target_words"`` with one line per word (the line's label is the word).

    Example:
        >>> fig = target_words(t, ["good", "poor"], value="rank")                 # doctest: +SKIP
    """
    position = trace_data.default_position(trace) if position is None else trace_data.resolve(trace, position)
    table = trace_data.targets_table(trace, words, position, trace_data.lens_layers(trace, layers), lens)
    with style():
        fig = new_figure(5.8, 3.3)
        ax = fig.add_subplot()
        draw_target_words(ax, table, value=value, log=log)
        ax.set_title("target words across layers"
                     + (f" ({trace_data.lens_name(lens)})" if lens is not None else "")
                     + f"\nat the {trace_data.reading(trace).describe(trace, position)}")
    if path is not None:
        save(fig, path)
    return fig


def draw_target_words(ax: "Axes", table: pd.DataFrame, *, value: str = "prob", log: bool = False,
                      ylim: tuple[float, float] | None = None) -> None:
    """Draw a ``layer, target, prob, rank`` table as one line per target (seaborn's colour-blind palette)."""
    import seaborn as sns

    from ..core.errors import VlmLensError

    if value not in ("prob", "rank"):
        raise VlmLensError(f"value={value!r}: expected 'prob' or 'rank'.")
    targets = list(dict.fromkeys(table["target"]))
    palette = sns.color_palette("colorblind", len(targets))
    for color, target in zip(palette, targets):
        rows = table[table["target"] == target].sort_values("layer")
        ax.plot(rows["layer"], rows[value], marker="o", markersize=2.5, linewidth=1.4, color=color, label=target)
    if value == "rank":
        ax.set_yscale("log")
        ax.invert_yaxis()
        ax.set_ylabel("rank (1 = top)")
        worst = max(float(table["rank"].max()), 2.0)
        ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
                 if t <= worst * 1.5]
        ax.set_yticks(ticks, [str(t) for t in ticks])  # whole ranks, not powers of ten
        ax.minorticks_off()
    else:
        if log:
            ax.set_yscale("log")
        ax.set_ylabel("probability")
    if ylim is not None:
        ax.set_ylim(*ylim)
    layers = sorted(table["layer"].unique())
    ticks = thin_ticks(len(layers), 17)
    ax.set_xticks([layers[i] for i in ticks], [str(layers[i]) for i in ticks])
    ax.set_xlabel("layer (0 = decoder input)")
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside the data
    ax.grid(axis="y", color="#eeeeee", linewidth=0.6)
    ax.set_label("target_words")
