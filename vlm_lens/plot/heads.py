"""Per-head views: the attention row of every head, and every head's attention mass by segment.

Why: averaging heads hides the few that do the work (a head that reads the image, another the description). These
figures show each head on its own, on one shared colour scale in the attention convention of every figure (light =
little, dark = much, square root), for one trace (:func:`attention_heads`, :func:`head_mass`) or as the mean over a
dataset run (:func:`run_head_mass`, from the run's ``attention.segments`` table, which keeps every head).

Example:
    >>> fig = vl.plot.attention_heads(t)            # one panel per head: layer x context token    # doctest: +SKIP
    >>> fig = vl.plot.head_mass(t)                  # one panel per segment: layer x head          # doctest: +SKIP
    >>> fig = vl.plot.run_head_mass("runs/one-stage")                                              # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from ..biqa.attention import mass_by_segment
from ..core.errors import VlmLensError
from . import trace_data
from .attention import column_values, draw_attention, norm_for
from .style import ATTENTION_CMAP, ATTENTION_SCALE, attention_label, new_figure, save, style, thin_ticks

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..tracing.record import Trace

__all__ = ["attention_heads", "draw_head_mass", "head_mass", "run_head_mass"]


def attention_heads(trace: "Trace", query: int | None = None, *, layers: Sequence[int] | None = None,
                    image_tokens: str = "collapse", max_columns: int = 40, columns: int | None = None,
                    scale: str = ATTENTION_SCALE, cmap: str = ATTENTION_CMAP, vmax: float | None = None,
                    path: str | Path | None = None) -> "Figure":
    """A grid of heatmaps, one per head: layer x context token, the query's attention (default: the decision
    position), all on one colour scale.

    Args:
        trace: A Trace with attention rows.
        query, layers, image_tokens, max_columns, scale, cmap, vmax: As in :func:`vlm_lens.plot.attention`.
        columns: Panels per row (default: as many as fit 16 inches, at most 4).
        path: Also save the figure there.

    Returns:
        The Figure; panel Axes are labelled ``"head:<h>"``; tick labels only on the outer panels.

    Example:
        >>> fig = attention_heads(t, layers=[6, 7, 8])                                 # doctest: +SKIP
    """
    n_heads = trace.attention.shape[1] if trace.attention is not None else 0
    panels = []
    for h in range(n_heads):
        matrix, numbers, position = trace_data.attention_matrix(trace, query, h, layers)
        panels.append(matrix)
    if not panels:
        raise VlmLensError("this trace holds no attention rows; trace with attention=True (the default).")
    keys = trace_data.build_columns(trace, list(range(position + 1)), image_tokens)
    keys, note = trace_data.bin_columns(keys, max_columns)
    values = [column_values(m, keys) for m in panels]
    width = sum(c.width for c in keys)
    panel = 0.8 + 0.13 * width  # inches per panel
    per_row = columns or max(1, min(4, n_heads, int(16 // panel)))
    n_rows = -(-n_heads // per_row)
    norm = norm_for(scale, vmax if vmax is not None else max(float(v.max()) for v in values))
    with style():
        fig = new_figure(1.6 + per_row * panel, 1.2 + n_rows * (1.3 + 0.16 * len(numbers)))
        grid = fig.subplots(n_rows, per_row, sharex=True, sharey=True, squeeze=False)
        for h, ax in enumerate(grid.ravel()):
            if h >= n_heads:
                ax.set_axis_off()
                continue
            mesh = draw_attention(ax, values[h], keys, numbers, norm=norm, cmap=cmap, segment_axis=h < per_row)
            ax.set_label(f"head:{h}")
            ax.set_title(f"head {h}", fontsize=8, pad=24 if h < per_row else 4)
            if h % per_row:
                ax.set_ylabel("")
            if h < n_heads - per_row:
                ax.set_xlabel("")
                ax.tick_params(labelbottom=False)
        fig.suptitle(f"attention of the {trace_data.reading(trace).describe(trace, position)}, per head"
                     + (f"\n{note}" if note else ""))
        fig.colorbar(mesh, ax=list(grid.ravel()), label=attention_label(scale), shrink=0.8)
    if path is not None:
        save(fig, path)
    return fig


def head_mass(trace: "Trace", query: int | None = None, *, segments: Sequence[str] | None = None,
              layers: Sequence[int] | None = None, scale: str = ATTENTION_SCALE, path: str | Path | None = None
              ) -> "Figure":
    """Every head's attention mass by segment: one layer x head heatmap per segment (system, image, instruction,
    description, answer), of the query's row (default: the decision position), on one colour scale.

    Args:
        trace: A Trace with attention rows.
        query, layers: As in :func:`vlm_lens.plot.attention_mass`.
        segments: Which segments get a panel (default: every segment the row reaches).
        scale: Colour scale (default square root, as every attention figure).
        path: Also save the figure there.

    Returns:
        The Figure; panel Axes are labelled ``"head_mass:<segment>"``; each panel's cells are ``mass`` of the
        head (x) at the layer (y).

    Example:
        >>> fig = head_mass(t, segments=["image", "description"])                     # doctest: +SKIP
    """
    read = trace_data.reading(trace)
    position, row = trace_data.query_index(trace, query)
    rows = trace.attention[:, :, row, : position + 1].double()  # [layer, head, key]
    labels = read.labels[: position + 1]
    present = [s for s in trace_data.SEGMENT_ORDER if s in set(labels)]
    mass = mass_by_segment(rows, labels, present)  # [layer, head, segment]
    numbers = trace.attention_blocks
    n_layer, n_head, _ = mass.shape
    table = pd.DataFrame({"layer": np.repeat(numbers, n_head * len(present)),
                          "head": np.tile(np.repeat(np.arange(n_head), len(present)), n_layer),
                          "segment": present * (n_layer * n_head), "mass": mass.reshape(-1).numpy()})
    if layers is not None:
        missing = [l for l in layers if l not in numbers]
        if missing:
            raise VlmLensError(f"layers={list(layers)}: no attention rows for layers {missing} (this trace has "
                               f"layers {numbers[0]}..{numbers[-1]}, decoder blocks, 1 = the first).")
        table = table[table["layer"].isin(list(layers))]
    with style():
        fig = draw_head_mass(table, segments=segments, scale=scale)
        fig.suptitle(f"attention mass of the {read.describe(trace, position)}, per head and segment")
    if path is not None:
        save(fig, path)
    return fig


def run_head_mass(run: Any, *, segments: Sequence[str] | None = None, layers: Sequence[int] | None = None,
                  analysis: str = "attention", scale: str = ATTENTION_SCALE,
                  path: str | Path | None = None) -> "Figure":
    """:func:`head_mass` of a dataset run: every head's mean attention mass by segment (the run's
    ``<analysis>.segments`` table, which keeps every head).

    Args:
        run: A RunResult with the attention analysis, its folder, or its ``attention.segments`` table.
        segments, layers, scale: As in :func:`head_mass`.
        analysis: The attention analysis' table prefix (``"attention"``, or the name given with ``.named``).
        path: Also save the figure there.

    Example:
        >>> fig = run_head_mass("runs/one-stage", segments=["image", "description"])  # doctest: +SKIP
    """
    from .run_figures import read_table

    data = read_table(run, "segments", heads=None, analysis=analysis)
    table = data.table if layers is None else data.table[data.table["layer"].isin(list(layers))]
    with style():
        fig = draw_head_mass(table, segments=segments, scale=scale)
        fig.suptitle(f"{data.what()}: mass per head and segment\n{data.over()}")
    if path is not None:
        save(fig, path)
    return fig


def draw_head_mass(table: pd.DataFrame, *, segments: Sequence[str] | None = None,
                   scale: str = ATTENTION_SCALE) -> "Figure":
    """A figure of ``layer, head, segment, mass`` rows: one layer x head heatmap per segment, one colour scale."""
    present = [s for s in trace_data.SEGMENT_ORDER if s in set(table["segment"])]
    chosen = present if segments is None else list(segments)
    unknown = [s for s in chosen if s not in present]
    if unknown or not chosen:
        raise VlmLensError(f"segments={list(chosen)}: expected some of {present} (the segments this row reaches).")
    heads = sorted(int(h) for h in table["head"].unique())
    numbers = sorted(int(l) for l in table["layer"].unique())
    grids = [table[table["segment"] == s].pivot(index="layer", columns="head", values="mass")
             .reindex(index=numbers, columns=heads).to_numpy(float) for s in chosen]
    norm = norm_for(scale, max(float(np.nanmax(g)) for g in grids))
    fig = new_figure(1.4 + len(chosen) * (0.9 + 0.16 * len(heads)), 1.6 + 0.22 * len(numbers))
    axes = fig.subplots(1, len(chosen), sharey=True, squeeze=False)[0]
    for ax, segment, grid in zip(axes, chosen, grids):
        mesh = ax.pcolormesh(np.arange(len(heads) + 1) - 0.5, np.arange(len(numbers) + 1) - 0.5, grid,
                             cmap=ATTENTION_CMAP, norm=norm, edgecolors="face", linewidth=0)
        ticks = thin_ticks(len(heads), 16)
        ax.set_xticks(ticks, [str(heads[i]) for i in ticks])
        rows = thin_ticks(len(numbers), 40)
        ax.set_yticks(rows, [str(numbers[i]) for i in rows])
        ax.set_xlabel("head")
        ax.set_title(segment)
        ax.set_label(f"head_mass:{segment}")
    axes[0].set_ylabel("layer (decoder block)")
    fig.colorbar(mesh, ax=list(axes), label=attention_label(scale, "attention mass"), shrink=0.85)
    return fig
