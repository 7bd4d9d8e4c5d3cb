"""Two checkpoints, one figure: any Trace figure drawn for two traces side by side on one shared scale, with a
difference panel (second minus first) wherever the two show the same layers and tokens.

The traces are typically the same image and prompt run through two checkpoints (e.g. a one-stage and a two-stage
fine-tune). Shared scales are the point: two panels each scaled to their own maximum invite false comparisons. Each
trace is read at its own decision position by default (two answers of different lengths choose their levels at
different positions), and every panel title says which position it shows.

Example:
    >>> fig = vl.plot.compare(t_one, t_two, "target_words", names=("one-stage", "two-stage"))   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Union

import numpy as np

from ..biqa.vocabulary import LEVELS
from ..core.errors import VlmLensError
from . import trace_data
from .attention import (
    _picture,
    column_values,
    draw_attention,
    draw_attention_mass,
    draw_patch_grids,
    norm_for,
    patch_data,
)
from .latent import column_inches, draw_grid, latent_data
from .panels import DIVERGING, side_by_side, symmetric_norm, want_difference
from .style import ATTENTION_CMAP, ATTENTION_SCALE, attention_label, new_figure, save, style
from .topk import draw_target_words, draw_topk

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..tracing.record import Trace

__all__ = ["FIGURES", "compare"]



def compare(a: "Trace", b: "Trace", figure: str = "latent_output", *, names: tuple[str, str] = ("A", "B"),
            difference: bool | str = "auto", path: str | Path | None = None, **kwargs: Any) -> "Figure":
    """Draw ``figure`` for traces ``a`` and ``b`` side by side with one colour / value scale, and ``b - a``.

    Args:
        a, b: Two traces (usually one sample through two checkpoints).
        figure: One of :data:`FIGURES`: ``"latent_output"``, ``"topk"``, ``"target_words"``, ``"attention"``,
            ``"attention_mass"``, ``"patch_overlay"``.
        names: Panel titles.
        difference: ``"auto"`` adds the difference panel when the two panels line up (same layers, same tokens),
            True requires it (an error says why it cannot be drawn), False leaves it out. ``topk`` has none.
        path: Also save the figure there.
        **kwargs: Options of the single-trace figure (``positions=``, ``query=``, ``words=``, ``layer=``, ...).
            ``position=`` and ``query=`` default to each trace's own decision position, and may be a pair ``(for
            a, for b)``: two answers of different lengths put the same word at different positions.
            ``lens=`` too, and it usually is: two checkpoints are read through their own tuned lenses,
            ``lens=(lens_a, lens_b)``.

    Returns:
        The Figure. Panel Axes are labelled ``"<figure>:<name>"`` and the difference ``"<figure>:difference"``.

    Example:
        >>> fig = compare(t_a, t_b, "attention", names=("one-stage", "two-stage"))   # doctest: +SKIP
    """
    if figure not in FIGURES:
        raise VlmLensError(f"figure={figure!r}: expected one of {', '.join(FIGURES)}.")
    if difference not in (True, False, "auto"):
        raise VlmLensError(f"difference={difference!r}: expected True, False or 'auto'.")
    with style():
        fig = FIGURES[figure](a, b, tuple(names), difference, **kwargs)
    if path is not None:
        save(fig, path)
    return fig


#: A position given once for both traces, or a pair ``(for a, for b)``.
Where = Union[int, "tuple[int, int]", None]


def _each(value: Any, i: int) -> Any:
    """A ``position=`` / ``query=`` / ``lens=`` given once for both traces, or as a pair ``(for a, for b)``."""
    return value[i] if isinstance(value, tuple) else value


def _where(t: "Trace", position: int) -> str:
    """The position a panel shows, in words."""
    return trace_data.reading(t).describe(t, position)


def _legend_on_last(axes) -> None:
    """One legend, beside the last panel, instead of one over each panel's lines."""
    for ax in axes[:-1]:
        if ax.get_legend() is not None:
            ax.get_legend().remove()


# ----------------------------------------------------------------------------------------------------- figures
def _latent(a, b, names, difference, *, vmax: float | None = None, cmap: str = "viridis", max_label: int = 10,
            max_columns: int | None = None, lens=None, **kwargs) -> "Figure":
    ga, gb = (latent_data(t, max_columns=max_columns, lens=_each(lens, i), **kwargs) for i, t in enumerate((a, b)))
    aligned = ga.layers == gb.layers and [c.label for c in ga.columns] == [c.label for c in gb.columns]
    diff = want_difference(difference, aligned, "different layers or tokens")
    top = vmax if vmax is not None else max(float(ga.values.max()), float(gb.values.max()))
    norm = norm_for("linear", top)
    width = 1.2 + column_inches(max_label) * sum(c.width for c in ga.columns)
    fig, axes = side_by_side(3 if diff else 2, width, 2.1 + 0.26 * len(ga.layers), sharey=aligned)
    for ax, grid, name in zip(axes, (ga, gb), names):
        mesh = draw_grid(ax, grid, norm=norm, cmap=cmap, max_label=max_label)
        ax.set_title(name + (f"\n{grid.note}" if grid.note else ""))
        ax.set_label(f"latent_output:{name}")
    fig.colorbar(mesh, ax=axes[:2], label=ga.label, shrink=0.85, location="bottom")
    if diff:
        delta = trace_data.Grid(gb.values - ga.values, ga.layers, ga.columns, [], "")
        dmesh = draw_grid(axes[2], delta, norm=symmetric_norm(delta.values), cmap=DIVERGING)
        axes[2].set_title(f"{names[1]} − {names[0]}")
        axes[2].set_label("latent_output:difference")
        fig.colorbar(dmesh, ax=axes[2], label="difference", shrink=0.85, location="bottom")
    fig.suptitle(f"{trace_data.lens_name(_each(lens, 0))}: top-1 token per layer")
    return fig


def _topk(a, b, names, difference, *, position: Where = None, k: int = 5, layers=None, layer_range=None,
          max_layers: int = 40, max_label: int = 10, lens=None) -> "Figure":
    if difference is True:
        raise VlmLensError("difference=True: top-k candidates have no difference panel (the candidates differ).")
    tables, where = [], []
    for i, t in enumerate((a, b)):
        p = trace_data.default_position(t) if _each(position, i) is None else trace_data.resolve(t, _each(position, i))
        tables.append(trace_data.topk_table(t, p, k, trace_data.lens_layers(t, layers, layer_range, most=max_layers),
                                            _each(lens, i)))
        where.append(_where(t, p))
    top = max(float(table["prob"].max()) for table, _, _ in tables)
    n_layers = max(table["layer"].nunique() for table, _, _ in tables)
    fig, axes = side_by_side(2, 1.45 * k, 1.6 + 0.27 * n_layers, sharey=False)
    for ax, (table, final_id, final), name, at in zip(axes, tables, names, where):
        draw_topk(ax, table, final_id, max_label=max_label, xmax=top)
        ax.set_title(f"{name}: {at}\nfinal output {final!r} highlighted")
        ax.set_label(f"topk:{name}")
    return fig


def _target_words(a, b, names, difference, *, words=tuple(LEVELS), position: Where = None, layers=None,
                  value: str = "prob", log: bool = False, lens=None) -> "Figure":
    tables, where = [], []
    for i, t in enumerate((a, b)):
        p = trace_data.default_position(t) if _each(position, i) is None else trace_data.resolve(t, _each(position, i))
        tables.append(trace_data.targets_table(t, words, p, trace_data.lens_layers(t, layers), _each(lens, i)))
        where.append(_where(t, p))
    ta, tb = tables
    aligned = ta["layer"].tolist() == tb["layer"].tolist() and ta["target"].tolist() == tb["target"].tolist()
    diff = want_difference(difference, aligned, "different layers")
    both = np.concatenate([ta[value].to_numpy(), tb[value].to_numpy()])
    ylim = None if value == "rank" or log else (0.0, float(both.max()) * 1.05 or 1.0)
    fig, axes = side_by_side(3 if diff else 2, 4.2, 3.4, sharey=False)
    for ax, table, name, at in zip(axes, tables, names, where):
        draw_target_words(ax, table, value=value, log=log, ylim=ylim)
        ax.set_title(f"{name}\n{at}")
        ax.set_label(f"target_words:{name}")
    if value == "rank":
        lo, hi = min(ax.get_ylim()[1] for ax in axes[:2]), max(ax.get_ylim()[0] for ax in axes[:2])
        for ax in axes[:2]:
            ax.set_ylim(hi, lo)
    if diff:
        delta = tb.copy()
        delta[value] = tb[value].to_numpy() - ta[value].to_numpy()
        draw_target_words(axes[2], delta, value="prob")
        axes[2].axhline(0, color="black", linewidth=0.6)
        axes[2].set_ylabel(f"{value} difference")
        axes[2].set_title(f"{names[1]} − {names[0]}")
        axes[2].set_label("target_words:difference")
    _legend_on_last(axes)
    return fig


def _attention(a, b, names, difference, *, query: Where = None, heads="mean", layers=None,
               image_tokens: str = "collapse", max_columns: int = 60, scale: str = ATTENTION_SCALE,
               cmap: str = ATTENTION_CMAP, vmax: float | None = None) -> "Figure":
    panels, where = [], []
    for i, t in enumerate((a, b)):
        matrix, numbers, position = trace_data.attention_matrix(t, _each(query, i), heads, layers)
        columns = trace_data.build_columns(t, list(range(position + 1)), image_tokens)
        columns, _ = trace_data.bin_columns(columns, max_columns)
        panels.append((column_values(matrix, columns), columns, numbers))
        where.append(_where(t, position))
    (va, ca, la), (vb, cb, lb) = panels
    aligned = la == lb and [c.positions for c in ca] == [c.positions for c in cb] \
        and [c.label for c in ca] == [c.label for c in cb]
    diff = want_difference(difference, aligned, "different layers or context tokens")
    norm = norm_for(scale, vmax if vmax is not None else max(float(va.max()), float(vb.max())))
    width = 1.4 + 0.22 * sum(c.width for c in ca)
    fig, axes = side_by_side(3 if diff else 2, width, 2.4 + 0.24 * len(la), sharey=aligned)
    for ax, (values, columns, numbers), name, at in zip(axes, panels, names, where):
        mesh = draw_attention(ax, values, columns, numbers, norm=norm, cmap=cmap)
        ax.set_title(f"{name}: {at}", pad=22)
        ax.set_label(f"attention:{name}")
    fig.colorbar(mesh, ax=axes[:2], label=attention_label(scale), shrink=0.85, location="bottom")
    if diff:
        delta = vb - va
        dmesh = draw_attention(axes[2], delta, ca, la, norm=symmetric_norm(delta), cmap=DIVERGING)
        axes[2].set_title(f"{names[1]} − {names[0]}", pad=22)
        axes[2].set_label("attention:difference")
        fig.colorbar(dmesh, ax=axes[2], label="difference", shrink=0.85, location="bottom")
    return fig


def _attention_mass(a, b, names, difference, *, query: Where = None, heads="mean", layers=None) -> "Figure":
    tables, where = [], []
    for i, t in enumerate((a, b)):
        matrix, numbers, position = trace_data.attention_matrix(t, _each(query, i), heads, layers)
        tables.append(trace_data.segment_mass(matrix, trace_data.reading(t).labels, numbers))
        where.append(_where(t, position))
    ta, tb = tables
    aligned = ta[["layer", "segment"]].equals(tb[["layer", "segment"]])
    diff = want_difference(difference, aligned, "different layers or segments")
    fig, axes = side_by_side(3 if diff else 2, 3.8, 3.4, sharey=False)
    for ax, table, name, at in zip(axes, tables, names, where):
        draw_attention_mass(ax, table)
        ax.set_title(f"{name}\n{at}")
        ax.set_label(f"attention_mass:{name}")
        ax.set_ylim(0, 1)
    if diff:
        from .style import SEGMENT_COLORS

        delta = tb.assign(mass=tb["mass"].to_numpy() - ta["mass"].to_numpy())
        for segment, rows in delta.groupby("segment", sort=False):
            axes[2].plot(rows["layer"], rows["mass"], color=SEGMENT_COLORS.get(segment, "grey"), label=segment)
        axes[2].axhline(0, color="black", linewidth=0.6)
        axes[2].legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        axes[2].set_xlabel("layer")
        axes[2].set_ylabel("mass difference")
        axes[2].set_title(f"{names[1]} − {names[0]}")
        axes[2].set_label("attention_mass:difference")
    _legend_on_last(axes)
    return fig


def _patch_overlay(a, b, names, difference, *, query: Where = None, value: str = "attention",
                   layer: int = -1, heads="mean", target=None, image: Any = None, image_index: int = 0,
                   crop: str = "auto", alpha: float = 0.75, cmap: str = ATTENTION_CMAP,
                   scale: str | None = None, lens=None) -> "Figure":
    data = [patch_data(t, _each(query, i), value=value, layer=layer, heads=heads, target=target,
                       image_index=image_index, lens=_each(lens, i)) for i, t in enumerate((a, b))]
    (ga, title_a), (gb, title_b) = data
    aligned = [(n, g.shape) for n, g in ga] == [(n, g.shape) for n, g in gb]
    diff = want_difference(difference, aligned, "different patch grids")
    top = max(float(np.nanmax(g)) for grids, _ in data for _, g in grids)
    norm = norm_for(scale or ("sqrt" if value == "attention" else "linear"), top)
    picture = _picture(a, image, image_index)
    crop = ("center" if a.meta.get("family") == "llava" else "none") if crop == "auto" else crop
    n_rows = 3 if diff else 2
    fig = new_figure(1.4 + 3.0 * len(ga), 0.9 + 2.9 * n_rows)
    axes = fig.subplots(n_rows, len(ga), squeeze=False)
    for row, ((grids, _), name) in enumerate(zip(data, names)):
        mappable = draw_patch_grids(list(axes[row]), grids, picture, norm=norm, cmap=cmap, alpha=alpha, crop=crop)
        for ax in axes[row]:
            ax.set_title(f"{name}: {ax.get_title()}")
            ax.set_label(f"patch_overlay:{name}:{ax.get_label().split(':', 1)[1]}")
    fig.colorbar(mappable, ax=list(axes[:2].ravel()), shrink=0.8,
                 label=attention_label(scale or ("sqrt" if value == "attention" else "linear"),
                                       "attention" if value == "attention" else "lens probability"))
    if diff:
        delta = [(n, g2 - g1) for (n, g1), (_, g2) in zip(ga, gb)]
        dmap = draw_patch_grids(list(axes[2]), delta, None,
                                norm=symmetric_norm(np.concatenate([d.ravel() for _, d in delta])), cmap=DIVERGING)
        for ax in axes[2]:
            ax.set_title(f"{names[1]} − {names[0]}: {ax.get_title()}")
            ax.set_label(f"patch_overlay:difference:{ax.get_label().split(':', 1)[1]}")
        fig.colorbar(dmap, ax=list(axes[2]), shrink=0.8)
    first_a, *rest = title_a.splitlines()
    fig.suptitle(f"{names[0]}: {first_a}\n{names[1]}: {title_b.splitlines()[0]}" + "".join(f"\n{r}" for r in rest))
    return fig


#: The figures :func:`compare` can draw, by name.
FIGURES: dict[str, Callable[..., "Figure"]] = {
    "latent_output": _latent, "topk": _topk, "target_words": _target_words, "attention": _attention,
    "attention_mass": _attention_mass, "patch_overlay": _patch_overlay,
}
