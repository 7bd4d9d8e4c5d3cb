"""Figures of a dataset run: where the chosen query token looks, averaged over samples.

A :func:`vlm_lens.run` with the attention analysis (:class:`~vlm_lens.attention.Attention`) leaves three tables of
means over samples: ``attention.segments`` (mass by segment), ``attention.image_profile`` (attention over the image
tokens' index) and ``attention.grid`` (the same on the base patch grid of spatial families). This module draws them
with the drawing functions the single-Trace figures use, so one trace and a thousand samples look alike; and it
draws two runs (two checkpoints on the same images) side by side on one scale, with their difference.

It must never compute what the run did not: every number drawn is a row of those tables, averaged over heads
(or the heads you choose) and nothing else. Each figure takes a :class:`~vlm_lens.RunResult`, a run folder, or the
table itself.

Example:
    >>> r = vl.run(m, ds, analyses=[vl.analyses.Attention()], out="runs/one-stage")          # doctest: +SKIP
    >>> fig = vl.plot.run_attention_mass(r, path="mass.pdf")                                 # doctest: +SKIP
    >>> fig = vl.plot.compare_runs({"one-stage": r, "two-stage": "runs/two-stage"}, "image_profile")  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..core.errors import VlmLensError
from .attention import draw_attention_mass, draw_patch_grids, norm_for
from .panels import DIVERGING, side_by_side, symmetric_norm, want_difference
from .style import ATTENTION_CMAP, ATTENTION_SCALE, SEGMENT_COLORS, attention_label, new_figure, save, style, thin_ticks

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

__all__ = ["RUN_FIGURES", "compare_runs", "run_attention_mass", "run_image_profile", "run_patch_grid"]

#: Columns of each attention table of a run (``n``: samples averaged; optional in a table you pass yourself).
COLUMNS = {"segments": ("layer", "head", "segment", "mass"), "image_profile": ("layer", "head", "token", "mass"),
           "grid": ("grid", "layer", "head", "row", "col", "mass")}

_QUERIES = {"decision": "the decision position", "level": "the level word", "last": "the last position"}


@dataclass
class RunTable:
    """One attention table of a run, its heads averaged (or chosen).

    Attributes:
        table: The table's rows without ``head``: ``mass`` is the mean over the chosen heads.
        query: What the attending position was (``"decision"``, ``"level"``, ``"last"``, a position), if known.
        n: Samples averaged (the most of any row: image-profile tails and grid shapes may have fewer); 0: unknown.
        heads: How heads were reduced, in words.
        model: The run's model class, if known.
    """

    table: pd.DataFrame
    query: str | None
    n: int
    heads: str
    model: str | None = None

    def what(self) -> str:
        """Whose attention: ``"attention of the decision position"``."""
        q = self.query
        return "attention of " + (_QUERIES.get(q, f"position {q}") if q is not None else "the query token")

    def over(self) -> str:
        """How it was averaged: ``"mean over 4 samples, heads averaged"``."""
        return f"mean over {self.n} samples, {self.heads}" if self.n else f"mean over samples, {self.heads}"


def read_table(run: Any, name: str, heads: str | int | Sequence[int] | None = "mean",
               analysis: str = "attention") -> RunTable:
    """The ``<analysis>.<name>`` table of ``run`` (a RunResult, a run folder, or the table itself), heads reduced
    (``heads=None``: every head kept, one row each)."""
    from ..runs.engine import RunResult

    query = model = None
    if isinstance(run, (str, Path)):
        run = RunResult.load(run)
    if isinstance(run, RunResult):
        key = f"{analysis}.{name}"
        if key not in run.tables:
            raise VlmLensError(f"this run has no {key!r} table (it has {sorted(run.tables) or 'none'}); add the "
                               "attention analysis: vl.run(model, dataset, analyses=[..., vl.analyses.Attention()], "
                               "out=...).")
        model = (run.meta.get("model") or {}).get("class")
        summary = run.tables.get(f"{analysis}.summary")
        if summary is not None and len(summary):
            query = str(summary["query"].iloc[0])
            if not int(summary["n_used"].iloc[0]):
                raise VlmLensError(f"the run's {key!r} table is empty: none of its {summary['n_samples'].iloc[0]} "
                                   f"samples had a {query!r} query position (n_no_query="
                                   f"{summary['n_no_query'].iloc[0]}). Choose another Attention(query=...).")
        table = run.tables[key]
    elif isinstance(run, pd.DataFrame):
        table = run
    else:
        hint = " (for one Trace use vl.plot.attention_mass / attention / patch_overlay)" \
            if type(run).__name__ == "Trace" else ""
        raise VlmLensError(f"run: expected a RunResult, a run folder or an attention table, got "
                           f"{type(run).__name__}{hint}.")
    missing = [c for c in COLUMNS[name] if c not in table.columns and c != "head"]
    if missing:
        raise VlmLensError(f"the {name} table lacks columns {missing}: expected {', '.join(COLUMNS[name])} (the "
                           f"'attention.{name}' table of a run), got {list(table.columns)}.")
    if not len(table) and name != "grid":
        raise VlmLensError(f"the {name} table has no rows; run the attention analysis on samples with a query "
                           "position.")
    table = table if "head" in table.columns else table.assign(head=0)
    if heads is None:
        n = int(table["n"].max()) if "n" in table.columns and len(table) else 0
        return RunTable(table.drop(columns=[c for c in ("n",) if c in table.columns]), query, n, "every head", model)
    chosen, words = _heads(table, heads)
    keys = [c for c in COLUMNS[name] if c not in ("head", "mass")]
    reduced = table[table["head"].isin(chosen)].groupby(keys, sort=True, as_index=False)["mass"].mean()
    n = int(table["n"].max()) if "n" in table.columns and len(table) else 0
    if "n" in table.columns:
        reduced = reduced.merge(table.groupby(keys, as_index=False)["n"].max(), on=keys)
    return RunTable(reduced, query, n, words, model)


def _heads(table: pd.DataFrame, heads: str | int | Sequence[int]) -> tuple[list[int], str]:
    present = sorted(int(h) for h in table["head"].unique())
    if isinstance(heads, str):
        if heads != "mean":
            raise VlmLensError(f"heads={heads!r}: expected 'mean', a head index or a list of head indices.")
        return present, "heads averaged"
    chosen = [heads] if isinstance(heads, (int, np.integer)) else list(heads)
    n = len(present)
    if not chosen or any(isinstance(h, bool) or not isinstance(h, (int, np.integer)) or not -n <= h < n
                         for h in chosen):
        raise VlmLensError(f"heads={heads!r}: expected head indices in 0..{n - 1} (negative count from the last).")
    picked = sorted({present[h] for h in chosen})
    return picked, f"head {picked[0]}" if len(picked) == 1 else f"heads {picked}"


def _layers(table: pd.DataFrame, layers: Sequence[int] | None) -> pd.DataFrame:
    if layers is None:
        return table
    present = sorted(int(l) for l in table["layer"].unique())
    missing = [l for l in layers if l not in present]
    if missing or not len(layers):
        raise VlmLensError(f"layers={list(layers)}: this run has attention of layers {present[0]}..{present[-1]} "
                           f"(decoder blocks, 1 = the first); {missing or 'none'} not among them.")
    return table[table["layer"].isin(list(layers))]


# --------------------------------------------------------------------------------------------------- data
def mass_data(run: Any, heads="mean", layers: Sequence[int] | None = None, analysis: str = "attention") -> RunTable:
    """``layer, segment, mass``: segment mass per layer (segments no sample had, all zero, left out)."""
    data = read_table(run, "segments", heads, analysis)
    table = _layers(data.table, layers)
    seen = table.groupby("segment")["mass"].transform(lambda m: (m != 0).any())
    data.table = table[seen.astype(bool)][["layer", "segment", "mass"]].reset_index(drop=True)
    return data


def profile_data(run: Any, heads="mean", layers: Sequence[int] | None = None,
                 analysis: str = "attention") -> tuple[np.ndarray, list[int], RunTable]:
    """``([layer, token] mean attention, layer numbers, table)`` of the image profile."""
    data = read_table(run, "image_profile", heads, analysis)
    table = _layers(data.table, layers)
    wide = table.pivot(index="layer", columns="token", values="mass").sort_index()
    return wide.to_numpy(dtype=float), [int(l) for l in wide.index], data


def grid_data(run: Any, layer: int = -1, heads="mean",
              analysis: str = "attention") -> tuple[list[tuple[str, np.ndarray]], int, RunTable]:
    """``([(shape "RxC", [rows, cols])], layer number, table)`` of the patch-grid map at ``layer``."""
    data = read_table(run, "grid", heads, analysis)
    table = data.table
    if not len(table):
        model = f" ({data.model})" if data.model else ""
        raise VlmLensError(f"this run has no patch-grid rows: its model's{model} image tokens are not spatial (e.g. "
                           "mPLUG-Owl2's learned queries), so they cannot be laid on the image's patch grid; draw "
                           "run_image_profile(...) instead.")
    present = sorted(int(l) for l in table["layer"].unique())
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not (
            -len(present) <= layer < 0 or layer in present):
        raise VlmLensError(f"layer={layer!r}: expected a layer of this run ({present[0]}..{present[-1]}, decoder "
                           "blocks, 1 = the first) or a negative index counting from the last.")
    chosen = present[layer] if layer < 0 else int(layer)
    grids = []
    for shape, rows in table[table["layer"] == chosen].groupby("grid", sort=True):
        grids.append((str(shape), rows.pivot(index="row", columns="col", values="mass").sort_index().to_numpy(float)))
    return grids, chosen, data


# ------------------------------------------------------------------------------------------------ figures
def run_attention_mass(run: Any, *, heads: str | int | Sequence[int] = "mean", layers: Sequence[int] | None = None,
                       analysis: str = "attention", path: str | Path | None = None) -> "Figure":
    """Mean attention mass of the run's query token by segment per layer, as a stacked area summing to 1.

    Args:
        run: A :class:`~vlm_lens.RunResult` with the attention analysis, its folder, or its ``attention.segments``
            table (``layer, head, segment, mass[, n]``).
        heads: ``"mean"`` over heads, one head index, or a list of heads to average.
        layers: Layers to show (decoder blocks, 1 = the first); default all.
        analysis: The attention analysis' table prefix: ``"attention"``, or the name a second reading got with
            ``Attention(query=...).named(...)``.
        path: Also save the figure there.

    Returns:
        The Figure; its Axes is labelled ``"attention_mass"``, x ticks the layers, one legend entry per segment.

    Example:
        >>> fig = run_attention_mass("runs/one-stage", heads=[0, 3])                  # doctest: +SKIP
    """
    data = mass_data(run, heads, layers, analysis)
    with style():
        fig = new_figure(5.6, 3.3)
        ax = fig.add_subplot()
        _draw_mass(ax, data.table)
        ax.set_title(f"{data.what()} by segment\n{data.over()}")
    return _saved(fig, path)


def run_image_profile(run: Any, *, heads: str | int | Sequence[int] = "mean", layers: Sequence[int] | None = None,
                      scale: str = ATTENTION_SCALE, cmap: str = ATTENTION_CMAP, vmax: float | None = None,
                      analysis: str = "attention", path: str | Path | None = None) -> "Figure":
    """Layer x image-token-index heatmap of the run's mean attention on the image (the paper's Figure 5, averaged).

    Args:
        run: A RunResult with the attention analysis, its folder, or its ``attention.image_profile`` table.
        heads, layers, analysis: As in :func:`run_attention_mass`.
        scale: Colour scale ``"linear"``, ``"sqrt"`` (default, as :func:`vlm_lens.plot.attention`) or ``"log"``.
        cmap: Colormap.
        vmax: Top of the colour scale (default: the largest value shown).
        path: Also save the figure there.

    Returns:
        The Figure; the heatmap Axes is labelled ``"image_profile"`` (y ticks: layers, x: image-token index).

    Example:
        >>> fig = run_image_profile(r, scale="linear")                                # doctest: +SKIP
    """
    values, numbers, data = profile_data(run, heads, layers, analysis)
    with style():
        fig = new_figure(3.0 + 0.05 * min(values.shape[1], 120), 1.9 + 0.24 * len(numbers))
        ax = fig.add_subplot()
        mesh = _draw_profile(ax, values, numbers, norm=norm_for(scale, vmax or float(values.max())), cmap=cmap)
        ax.set_title(f"{data.what()} on the image\n{data.over()}" + _mark_tail(ax, data))
        fig.colorbar(mesh, ax=ax, label=_colour_label(scale), shrink=0.9)
    return _saved(fig, path)


def run_patch_grid(run: Any, layer: int = -1, *, heads: str | int | Sequence[int] = "mean",
                   scale: str = ATTENTION_SCALE, cmap: str = ATTENTION_CMAP, vmax: float | None = None,
                   analysis: str = "attention", path: str | Path | None = None) -> "Figure":
    """The run's mean attention on the base patch grid at one layer: one panel per grid shape, one colour scale.

    Args:
        run: A RunResult of a spatial family (LLaVA-1.5, LLaVA-NeXT, ...) with the attention analysis, its folder,
            or its ``attention.grid`` table.
        layer: Decoder block (1 = the first); negative counts from the last.
        heads, analysis: As in :func:`run_attention_mass`.
        scale, cmap, vmax: Colour scale (default square root, as every attention figure), map and top.
        path: Also save the figure there.

    Returns:
        The Figure; panel Axes are labelled ``"patch:<rows>x<cols>"``.

    Raises:
        VlmLensError: The run has no grid rows (a non-spatial family, e.g. mPLUG-Owl2) or no attention analysis.

    Example:
        >>> fig = run_patch_grid(r, layer=16)                                         # doctest: +SKIP
    """
    grids, chosen, data = grid_data(run, layer, heads, analysis)
    with style():
        fig = new_figure(0.6 + 3.2 * len(grids), 3.4)
        axes = list(fig.subplots(1, len(grids), squeeze=False)[0])
        top = vmax or max(float(np.nanmax(g)) for _, g in grids)
        mappable = _draw_grids(axes, grids, data, norm=norm_for(scale, top), cmap=cmap)
        fig.suptitle(f"{data.what()}, layer {chosen}\n{data.over()}")
        fig.colorbar(mappable, ax=axes, label=_colour_label(scale), shrink=0.85)
    return _saved(fig, path)


def compare_runs(runs: Mapping[str, Any], figure: str = "attention_mass", *, difference: bool | str = "auto",
                 path: str | Path | None = None, **kwargs: Any) -> "Figure":
    """Draw ``figure`` for two runs side by side on one scale, and their difference (second minus first).

    Args:
        runs: ``{name: run}`` for exactly two runs (RunResults, run folders or tables), e.g. one checkpoint
            fine-tuned one-stage and one two-stage, run on the same images; two or more for the figures of
            :data:`~vlm_lens.plot.analyses_compared.ANALYSIS_FIGURES`.
        figure: One of :data:`RUN_FIGURES`: ``"attention_mass"``, ``"image_profile"``, ``"patch_grid"`` (side by
            side, with the difference), or of :data:`~vlm_lens.plot.analyses_compared.ANALYSIS_FIGURES`:
            ``"first_top1"``, ``"lens_agreement"``, ``"segment_lines"``, ``"instability"``, ``"score_scatter"``
            (one panel per quantity, one colour per run; ``comparison=`` marks significant differences, see
            :func:`~vlm_lens.plot.analyses_compared.compare_analyses`).
        difference: ``"auto"`` adds the difference panel when the panels line up (same layers, segments, token
            count or grid shapes), True requires it (an error says why it cannot be drawn), False leaves it out.
        path: Also save the figure there.
        **kwargs: Options of the single-run figure (``heads=``, ``layers=``, ``layer=``, ``scale=``, ...).

    Returns:
        The Figure. Panel Axes are labelled ``"<figure>:<name>"`` (patch grids: ``"patch_grid:<name>:<RxC>"``)
        and the difference ``"<figure>:difference"``.

    Example:
        >>> fig = compare_runs({"one-stage": "runs/a", "two-stage": "runs/b"}, "patch_grid", layer=8)  # doctest: +SKIP
    """
    from .analyses_compared import ANALYSIS_FIGURES, compare_analyses

    if figure in ANALYSIS_FIGURES:
        return compare_analyses(runs, figure, path=path, **kwargs)
    if figure not in RUN_FIGURES:
        raise VlmLensError(f"figure={figure!r}: expected one of {', '.join([*RUN_FIGURES, *ANALYSIS_FIGURES])}.")
    if difference not in (True, False, "auto"):
        raise VlmLensError(f"difference={difference!r}: expected True, False or 'auto'.")
    if not isinstance(runs, Mapping) or len(runs) != 2:
        raise VlmLensError(f"runs: expected a dict of exactly two named runs, e.g. {{'one-stage': run_a, "
                           f"'two-stage': run_b}}; got {type(runs).__name__}"
                           f"{f' of {len(runs)}' if isinstance(runs, Mapping) else ''}.")
    names = tuple(str(k) for k in runs)
    with style():
        fig = RUN_FIGURES[figure](list(runs.values()), names, difference, **kwargs)
    return _saved(fig, path)


# ---------------------------------------------------------------------------------------------- drawing
def _draw_mass(ax: "Axes", table: pd.DataFrame) -> None:
    draw_attention_mass(ax, table)
    layers = sorted(int(l) for l in table["layer"].unique())
    keep = thin_ticks(len(layers), 20)
    ax.set_xticks([layers[i] for i in keep], [str(layers[i]) for i in keep])


def _draw_profile(ax: "Axes", values: np.ndarray, layers: Sequence[int], *, norm: "Normalize", cmap: str):
    n_layer, n_token = values.shape
    mesh = ax.pcolormesh(np.arange(n_token + 1) - 0.5, np.arange(n_layer + 1) - 0.5, values, cmap=cmap, norm=norm,
                         edgecolors="face", linewidth=0)
    cols = thin_ticks(n_token, 16)
    ax.set_xticks(cols, [str(c) for c in cols])
    rows = thin_ticks(n_layer, 40)
    ax.set_yticks(rows, [str(layers[i]) for i in rows])
    ax.set_xlabel("image token index")
    ax.set_ylabel("layer (decoder block)")
    ax.set_label("image_profile")
    return mesh


def _draw_grids(axes: Sequence["Axes"], grids: list[tuple[str, np.ndarray]], data: RunTable, *,
                norm: "Normalize", cmap: str):
    mappable = draw_patch_grids(axes, grids, None, norm=norm, cmap=cmap)
    counts = data.table.groupby("grid")["n"].max() if "n" in data.table.columns else {}
    for ax, (shape, grid) in zip(axes, grids):
        n = f", {int(counts[shape])} samples" if shape in counts else ""
        ax.set_title(f"{grid.shape[0]} x {grid.shape[1]} patches{n}")
    return mappable


def _mark_tail(ax: "Axes", data: RunTable) -> str:
    """Where image spans differ in length (LLaVA-NeXT), the tokens past the shortest span average fewer samples:
    a dashed line marks the first such index, and the returned note says so."""
    if "n" not in data.table.columns:
        return ""
    per_token = data.table.groupby("token")["n"].max()
    short = per_token[per_token < per_token.max()]
    if not len(short):
        return ""
    first = int(short.index.min())
    ax.axvline(first - 0.5, color="#1f77b4", linewidth=1.0, linestyle="--", gid="fewer-samples")
    return f"\nfrom index {first} (dashed): fewer samples, down to {int(short.min())}"


def _colour_label(scale: str) -> str:
    return attention_label(scale, "mean attention")


def _saved(fig: "Figure", path: str | Path | None) -> "Figure":
    if path is not None:
        save(fig, path)
    return fig


# ------------------------------------------------------------------------------------------ comparisons
#: How a comparison of runs says that its panels do not line up.
_RUNS_LINE_UP = {"subject": "the two runs' panels", "fix": "compare runs of models of the same shape"}


def _compare_mass(runs, names, difference, *, heads="mean", layers=None, analysis: str = "attention") -> "Figure":
    data = [mass_data(r, heads, layers, analysis) for r in runs]
    segments = [s for s in SEGMENT_COLORS if any(s in set(d.table["segment"]) for d in data)]
    # a segment one run never attended (no description generated, say) had mass 0 there: the difference is defined
    wide = [d.table.pivot(index="layer", columns="segment", values="mass").reindex(columns=segments).fillna(0.0)
            for d in data]
    aligned = wide[0].index.equals(wide[1].index)
    diff = want_difference(difference, aligned, "different layers", **_RUNS_LINE_UP)
    top = max(1.0, *(float(w.sum(axis=1).max()) for w in wide))
    fig, axes = side_by_side(3 if diff else 2, 3.8, 3.4, sharey=False)
    for ax, d, name in zip(axes, data, names):
        _draw_mass(ax, d.table)
        ax.set_ylim(0, top)
        ax.set_title(f"{name} ({d.n} samples)")
        ax.set_label(f"attention_mass:{name}")
    if diff:
        delta = wide[1] - wide[0]
        for segment in segments:
            axes[2].plot(delta.index, delta[segment], color=SEGMENT_COLORS.get(segment, "grey"), label=segment)
        axes[2].axhline(0, color="black", linewidth=0.6)
        axes[2].set_xticks(axes[0].get_xticks(), [t.get_text() for t in axes[0].get_xticklabels()])
        axes[2].legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        axes[2].set_xlabel("layer")
        axes[2].set_ylabel("mass difference")
        axes[2].set_title(f"{names[1]} − {names[0]}")
        axes[2].set_label("attention_mass:difference")
    fig.suptitle(f"{data[0].what()} by segment, {data[0].heads}")
    return fig


def _compare_profile(runs, names, difference, *, heads="mean", layers=None, scale: str = ATTENTION_SCALE,
                     cmap: str = ATTENTION_CMAP, vmax: float | None = None, analysis: str = "attention") -> "Figure":
    data = [profile_data(r, heads, layers, analysis) for r in runs]
    (va, la, da), (vb, lb, _) = data
    aligned = la == lb and va.shape == vb.shape
    diff = want_difference(difference, aligned, "different layers or numbers of image tokens", **_RUNS_LINE_UP)
    norm = norm_for(scale, vmax if vmax is not None else max(float(va.max()), float(vb.max())))
    width = 1.6 + 0.04 * min(max(va.shape[1], vb.shape[1]), 120)
    fig, axes = side_by_side(3 if diff else 2, width, 2.4 + 0.24 * len(la), sharey=aligned)
    for ax, (values, numbers, d), name in zip(axes, data, names):
        mesh = _draw_profile(ax, values, numbers, norm=norm, cmap=cmap)
        ax.set_title(f"{name} ({d.n} samples)" + _mark_tail(ax, d))
        ax.set_label(f"image_profile:{name}")
    fig.colorbar(mesh, ax=axes[:2], label=_colour_label(scale), shrink=0.85, location="bottom")
    if diff:
        delta = vb - va
        dmesh = _draw_profile(axes[2], delta, la, norm=symmetric_norm(delta), cmap=DIVERGING)
        axes[2].set_title(f"{names[1]} − {names[0]}")
        axes[2].set_label("image_profile:difference")
        fig.colorbar(dmesh, ax=axes[2], label="difference", shrink=0.85, location="bottom")
    fig.suptitle(f"{da.what()} on the image, {da.heads}")
    return fig


def _compare_grid(runs, names, difference, *, layer: int = -1, heads="mean", scale: str = ATTENTION_SCALE,
                  cmap: str = ATTENTION_CMAP, vmax: float | None = None, analysis: str = "attention") -> "Figure":
    data = [grid_data(r, layer, heads, analysis) for r in runs]
    (ga, la, da), (gb, lb, _) = data
    aligned = la == lb and [(s, g.shape) for s, g in ga] == [(s, g.shape) for s, g in gb]
    diff = want_difference(difference, aligned, "different layers or patch grids", **_RUNS_LINE_UP)
    top = vmax if vmax is not None else max(float(np.nanmax(g)) for grids, _, _ in data for _, g in grids)
    n_rows, n_cols = max(len(ga), len(gb)), 3 if diff else 2  # one row per grid shape, one column per run
    fig = new_figure(0.8 + 3.0 * n_cols, 0.9 + 2.9 * n_rows)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for col, ((grids, chosen, d), name) in enumerate(zip(data, names)):
        mappable = _draw_grids(list(axes[:, col]), grids, d, norm=norm_for(scale, top), cmap=cmap)
        for ax, (shape, _) in zip(axes[:, col], grids):
            ax.set_title(f"{name}, layer {chosen}\n{ax.get_title()}")
            ax.set_label(f"patch_grid:{name}:{shape}")
        for ax in axes[len(grids):, col]:
            ax.set_axis_off()
    fig.colorbar(mappable, ax=list(axes[:, :2].ravel()), label=_colour_label(scale), shrink=0.8, location="bottom")
    if diff:
        delta = [(s, g2 - g1) for (s, g1), (_, g2) in zip(ga, gb)]
        dmap = draw_patch_grids(list(axes[:, 2]), delta, None,
                                norm=symmetric_norm(np.concatenate([d.ravel() for _, d in delta])), cmap=DIVERGING)
        for ax, (shape, _) in zip(axes[:, 2], delta):
            ax.set_title(f"{names[1]} − {names[0]}\n{ax.get_title().split(': ', 1)[1]}")
            ax.set_label(f"patch_grid:difference:{shape}")
        fig.colorbar(dmap, ax=list(axes[:, 2]), label="difference", shrink=0.8, location="bottom")
    fig.suptitle(f"{da.what()} on the patch grid, {da.heads}")
    return fig


#: The figures :func:`compare_runs` can draw, by name.
RUN_FIGURES: dict[str, Callable[..., "Figure"]] = {
    "attention_mass": _compare_mass, "image_profile": _compare_profile, "patch_grid": _compare_grid,
}
