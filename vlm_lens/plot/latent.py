"""Latent-output heatmap: what every layer would answer at every position, read through the logit lens.

Rows are layers (0 = decoder input, at the bottom), columns are positions; each cell holds the lens's top-1 token
at that layer and position, coloured by its probability, by the probability of the token the model finally outputs
there, or by the probability of a chosen word. By default the columns are a window around the decision position
(where the level word is chosen, :mod:`vlm_lens.plot.reading`): the end of the description, the answer sentence
and the level word, written in full. Image positions are collapsed to one column per image (the most frequent
top-1 token across the image, mean probability), drawn as a narrow band, shown one by one, or hidden. Long
selections are windowed to the last ``max_columns`` columns, never squeezed into an unreadable wall.

Example:
    >>> fig = vl.plot.latent_output(t)                                         # doctest: +SKIP
    >>> fig = vl.plot.latent_output(t, positions="response", context=6)        # doctest: +SKIP
    >>> vl.plot.save(fig, "latent.pdf")                                        # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from . import trace_data
from .style import HIGHLIGHT, SEGMENT_COLORS, new_figure, save, style, thin_ticks

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    from ..tracing.lens import Lens
    from ..tracing.record import Trace

__all__ = ["DECISION_COLUMNS", "draw_grid", "latent_output"]

#: Columns of the default window around the decision position.
DECISION_COLUMNS = 14


def latent_output(trace: "Trace", *, positions: Sequence[int] | str | None = "decision", context: int = 4,
                  layers: Sequence[int] | None = None, color: str | int = "top1", image_tokens: str = "collapse",
                  max_columns: int | None = None, max_label: int = 10, cmap: str = "viridis",
                  vmax: float | None = None, lens: "Lens | None" = None, path: str | Path | None = None) -> "Figure":
    """Latent-output heatmap: layers x positions, the lens top-1 token written into each cell.

    Args:
        trace: A Trace with its model attached (the lens needs the final norm and output head).
        positions: Which positions: ``"decision"`` (default: the ``max_columns`` positions that end
            three positions after the decision position, or after the last prompt position without one), a list,
            a segment name (``"response"``, ``"instruction"``, ``"description"``, ``"answer"``, ...) or None for
            every kept position.
        context: With a segment name, also show this many positions before the segment.
        layers: Hidden-state indices (rows); default every kept layer.
        color: ``"top1"`` (probability of the written token), ``"final"`` (probability of the token the last layer
            outputs at that position) or a target word / token id (its probability).
        image_tokens: ``"collapse"`` (one column per image: its most frequent top-1 token, mean probability),
            ``"band"`` (a narrow strip, no text), ``"full"`` or ``"hide"``.
        max_columns: At most this many columns; longer selections keep the last ones (the answer end). Default 14
            around the decision position, 40 otherwise.
        max_label: Longest token text written, in characters (elided with ``…``); 10 keeps every level word
            whole.
        cmap: Colormap of the probabilities.
        vmax: Top of the colour scale (default: the largest value shown).
        lens: The lens the layers are read through: None for the logit lens, or a lens of the trace's model (e.g.
            a :class:`~vlm_lens.TunedLens`); the title names it.
        path: Also save the figure there (``.png``, ``.svg`` or ``.pdf``).

    Returns:
        The Figure; its heatmap Axes is labelled ``"latent_output"``.

    Example:
        >>> fig = latent_output(t, positions="response", context=4, color="final")   # doctest: +SKIP
    """
    grid = latent_data(trace, positions=positions, context=context, layers=layers, color=color,
                       image_tokens=image_tokens, max_columns=max_columns, lens=lens)
    with style():
        fig = _figure_for(grid, panels=1, max_label=max_label)
        ax = fig.add_subplot()
        mesh = draw_grid(ax, grid, norm=_norm(vmax if vmax is not None else _top(grid.values)), cmap=cmap,
                         max_label=max_label)
        ax.set_label("latent_output")
        ax.set_title(f"{trace_data.lens_name(lens)}: top-1 token per layer" + (f"\n{grid.note}" if grid.note else ""))
        read = trace_data.reading(trace)
        if read.decided:
            mark_column(ax, grid, read.position)
        fig.colorbar(mesh, ax=ax, label=grid.label, shrink=0.9)
    if path is not None:
        save(fig, path)
    return fig


def latent_data(trace: "Trace", *, positions="decision", context: int = 4, layers=None, color="top1",
                image_tokens: str = "collapse", max_columns: int | None = None,
                lens: "Lens | None" = None) -> "trace_data.Grid":
    """The :class:`~vlm_lens.plot.trace_data.Grid` :func:`latent_output` draws (for comparisons and custom figures)."""
    chosen = trace_data.select_positions(trace, positions, context)
    columns = trace_data.build_columns(trace, chosen, image_tokens)
    if isinstance(positions, str) and positions == "decision":
        columns, note = trace_data.decision_window(columns, max_columns or DECISION_COLUMNS,
                                                   trace_data.reading(trace).words)
    else:
        columns, note = trace_data.window(columns, max_columns or 40)
    grid = trace_data.latent_grid(trace, chosen, columns, trace_data.lens_layers(trace, layers), color, lens)
    grid.note = note
    return grid


def draw_grid(ax: "Axes", grid: "trace_data.Grid", *, norm: "Normalize", cmap: str = "viridis", max_label: int = 8,
              xlabel: str = "position", ylabel: str = "layer (0 = decoder input)"):
    """Draw a layers x columns :class:`~vlm_lens.plot.trace_data.Grid` on ``ax``: variable-width columns, cell texts
    where they fit, x tick labels coloured by segment, thin separators at segment changes. Returns the mesh."""
    widths = np.array([c.width for c in grid.columns])
    x = np.concatenate([[0.0], np.cumsum(widths)])
    y = np.arange(len(grid.layers) + 1) - 0.5
    mesh = ax.pcolormesh(x, y, grid.values, cmap=cmap, norm=norm, edgecolors="face", linewidth=0)
    centers = (x[:-1] + x[1:]) / 2
    fig_w, fig_h = ax.figure.get_size_inches()
    cell_w = (fig_w - 1.8) / max(x[-1], 1) * 72                   # points per unit column
    cell_h = (fig_h - 1.6) / max(len(grid.layers), 1) * 72
    longest = max((len(w) for row in grid.words for w in row), default=1)
    size = min(7.0, cell_w / (0.6 * min(max(longest, 4), max_label)), cell_h * 0.7)
    colormap = mesh.get_cmap()
    if size >= 4 and grid.words:
        for i in range(len(grid.layers)):
            for j, c in enumerate(grid.columns):
                word = grid.words[i][j]
                if word and c.text:
                    r, g, b, _ = colormap(norm(grid.values[i, j]))
                    ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                    ax.text(centers[j], i, word[:max_label] if len(word) <= max_label else word[: max_label - 1] + "…",
                            ha="center", va="center", fontsize=size, color=ink)
    ticks, labels, segments = trace_data.column_ticks(grid.columns, x)
    keep = thin_ticks(len(ticks), 60)
    ax.set_xticks([ticks[i] for i in keep], [labels[i] for i in keep], rotation=60, ha="right",
                  rotation_mode="anchor")
    for tick, i in zip(ax.get_xticklabels(), keep):
        tick.set_color(_darker(SEGMENT_COLORS.get(segments[i], "#000000")))
    rows = thin_ticks(len(grid.layers), 40)
    ax.set_yticks(rows, [str(grid.layers[i]) for i in rows])
    for j in range(1, len(grid.columns)):
        if grid.columns[j].segment != grid.columns[j - 1].segment:
            ax.axvline(x[j], color="white", linewidth=1.2)
    ax.set_xlim(0, x[-1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return mesh


def mark_column(ax: "Axes", grid: "trace_data.Grid", position: int) -> None:
    """Outline the column of ``position`` (the decision position) in the highlight colour, if it is shown."""
    from matplotlib.patches import Rectangle

    x = 0.0
    for column in grid.columns:
        if position in column.positions:
            ax.add_patch(Rectangle((x, -0.5), column.width, len(grid.layers), fill=False, edgecolor=HIGHLIGHT,
                                   linewidth=1.6, gid=f"decision:{position}", clip_on=False))
            return
        x += column.width


def _figure_for(grid: "trace_data.Grid", panels: int, extra_height: float = 0.0, max_label: int = 10) -> "Figure":
    width = sum(c.width for c in grid.columns)
    return new_figure(1.8 + (column_inches(max_label) * width + 1.2) * panels,
                      1.9 + 0.26 * len(grid.layers) + extra_height)


def column_inches(max_label: int) -> float:
    """Width of one latent-output column: room for ``max_label`` characters at 6.5 points."""
    return max(0.5, 0.055 * max_label)


def _norm(vmax: float, vmin: float = 0.0):
    from matplotlib.colors import Normalize

    return Normalize(vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-6)


def _top(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else 1.0


def _darker(color: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return tuple(0.75 * c for c in to_rgb(color))
