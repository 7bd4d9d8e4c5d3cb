"""Figures of intervention effects over a dataset: what the decision depends on, per segment and layer.

Two figures, drawn from the tables the effect analyses leave in a run (they never compute anything else):

- :func:`knockout_effects`: a heatmap of segment x window of decoder layers, the mean effect of cutting the decision
  position's attention to that segment in those layers (``knockout.effects``); several runs side by side on one
  colour scale, e.g. the one-stage and the two-stage checkpoint;
- :func:`patching_curve`: per hidden index, the mean effect of patching another checkpoint's residual stream into
  each segment (``patching.effects``), one line per segment, with its 95% interval.

Example:
    >>> runs = {"one-stage": "runs/one", "two-stage": "runs/two"}                         # doctest: +SKIP
    >>> fig = vl.plot.knockout_effects(runs, path="ko.png")                               # doctest: +SKIP
    >>> fig = vl.plot.patching_curve("runs/two", quantity="recovered", path="patch.png")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd

from ..core.errors import VlmLensError
from .panels import DIVERGING, side_by_side, symmetric_norm
from .style import HIGHLIGHT, SEGMENT_COLORS, save, style

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["knockout_effects", "patching_curve"]

#: What each plotted quantity means, as the colour bar / y axis says it.
QUANTITIES = {"abs_d_score": "mean |change| of the\nQ-Align score (1-5)", "d_score": "mean change of the\nQ-Align "
              "score (1-5)", "d_logp": "mean change of\nlog p(level word)", "flip_rate": "share of samples\nwhose "
              "level changes", "recovered": "share of the score\ngap recovered", "to_source": "share of samples "
              "that\ntake the source's level"}
#: Line colours of position names that are not segments.
_NAMED_COLORS = {"decision": HIGHLIGHT, "prompt": "#000000"}
_KEYS = {"knockout": ("segment", "window", "first", "last"), "patching": ("segment", "layer")}


def effects_table(run: Any, analysis: str) -> pd.DataFrame:
    """The ``<analysis>.effects`` table of a RunResult, a run folder, or the table itself."""
    from ..runs.engine import RunResult

    if isinstance(run, (str, Path)):
        run = RunResult.load(run)
    if isinstance(run, RunResult):
        key = f"{analysis}.effects"
        if key not in run.tables:
            cls = "KnockoutEffects()" if analysis == "knockout" else "PatchingEffects(source)"
            raise VlmLensError(f"this run has no {key!r} table (it has {sorted(run.tables) or 'none'}); run the "
                               f"analysis: vl.run(model, dataset, [vl.analyses.{cls}], out=...).")
        table = run.tables[key]
    elif isinstance(run, pd.DataFrame):
        table = run
    else:
        raise VlmLensError(f"run: expected a RunResult, a run folder or an {analysis}.effects table, got "
                           f"{type(run).__name__}.")
    missing = [c for c in _KEYS[analysis] if c not in table.columns]
    if missing or not len(table):
        raise VlmLensError(f"the {analysis}.effects table {'lacks columns ' + str(missing) if missing else 'is empty'}"
                           f" (columns: {list(table.columns)}); every sample may have lacked a level word.")
    return table


def _runs(runs: Any) -> dict[str, Any]:
    if isinstance(runs, Mapping):
        if not runs:
            raise VlmLensError("runs: the mapping is empty; pass {name: run, ...}.")
        return {str(k): v for k, v in runs.items()}
    return {"": runs}


def _quantity(quantity: str, table: pd.DataFrame) -> None:
    if quantity not in QUANTITIES or quantity not in table.columns:
        present = [q for q in QUANTITIES if q in table.columns]
        raise VlmLensError(f"quantity={quantity!r}: expected one of {present}.")


def knockout_effects(runs: Any, quantity: str = "abs_d_score", *, path: str | Path | None = None) -> "Figure":
    """Heatmap segment x layer window of the mean effect of knocking out the decision position's attention.

    Args:
        runs: A run with the knockout analysis (RunResult, folder or ``knockout.effects`` table), or a mapping
            ``name -> run`` drawn side by side on one colour scale.
        quantity: ``"abs_d_score"`` (how far the score moved), ``"d_score"`` (signed; cells marked ``*`` where the
            Wilcoxon test against no change gives p < 0.05), ``"d_logp"`` or ``"flip_rate"``.
        path: Also save the figure there.

    Returns:
        The Figure; one Axes per run, labelled ``"knockout_effects"``.
    """
    named = {name: effects_table(r, "knockout") for name, r in _runs(runs).items()}
    for table in named.values():
        _quantity(quantity, table)
    grids = {name: _grid(t, quantity) for name, t in named.items()}
    from matplotlib.colors import Normalize

    values = np.concatenate([g[0].ravel() for g in grids.values()])
    values = values[np.isfinite(values)]
    signed = quantity in ("d_score", "d_logp")
    top = 1.0 if quantity == "flip_rate" else float(values.max()) if len(values) and values.max() > 0 else 1e-6
    norm = symmetric_norm(values) if signed else Normalize(0, top)
    n_windows = max(g[0].shape[1] for g in grids.values())
    with style():
        fig, axes = side_by_side(len(grids), 0.55 * n_windows + 1.3, 0.42 * max(g[0].shape[0] for g in grids.values())
                                 + 1.2)
        for ax, (name, (grid, segments, windows, marks)) in zip(axes, grids.items()):
            image = ax.imshow(grid, cmap=DIVERGING if signed else "Purples", norm=norm, aspect="auto")
            for (i, j), v in np.ndenumerate(grid):
                if np.isfinite(v):
                    dark = abs(norm(v) - 0.5) > 0.3 if signed else norm(v) > 0.55
                    ax.text(j, i, f"{v:+.2f}{marks[i, j]}" if signed else f"{v:.2f}", ha="center", va="center",
                            fontsize=6.5, color="white" if dark else "black")
            ax.set_xticks(range(len(windows)), windows)
            ax.set_yticks(range(len(segments)), segments)
            ax.set_xlabel("decoder blocks knocked out")
            n = int(named[name]["n"].max()) if "n" in named[name].columns else 0
            ax.set_title(f"{name}{' (' if name else ''}n = {n}{')' if name else ''}", loc="left")
            ax.set_label("knockout_effects")
        axes[0].set_ylabel("keys cut from the\ndecision position")
        bar = fig.colorbar(image, ax=axes, shrink=0.9, pad=0.02)
        bar.set_label(QUANTITIES[quantity] + ("\n(* p < 0.05, Wilcoxon)" if quantity == "d_score" else ""))
    if path is not None:
        save(fig, path)
    return fig


def _grid(table: pd.DataFrame, quantity: str) -> tuple[np.ndarray, list[str], list[str], np.ndarray]:
    segments = list(dict.fromkeys(table["segment"]))
    windows = [w for _, w in sorted({(int(f), str(w)) for f, w in zip(table["first"], table["window"])})]
    grid = np.full((len(segments), len(windows)), np.nan)
    marks = np.full(grid.shape, "", dtype=object)
    for row in table.itertuples():
        i, j = segments.index(row.segment), windows.index(str(row.window))
        grid[i, j] = float(getattr(row, quantity))
        if quantity == "d_score" and "p" in table.columns and float(row.p) < 0.05:
            marks[i, j] = "*"
    return grid, segments, windows, marks


def patching_curve(runs: Any, quantity: str = "d_score", *, path: str | Path | None = None) -> "Figure":
    """Per hidden index, the mean effect of patching the source checkpoint's residual stream, one line per segment.

    Args:
        runs: A run with the patching analysis (RunResult, folder or ``patching.effects`` table), or a mapping
            ``name -> run``, one panel each.
        quantity: ``"d_score"`` (with its 95% interval), ``"recovered"``, ``"d_logp"``, ``"flip_rate"`` or
            ``"to_source"``.
        path: Also save the figure there.

    Returns:
        The Figure; one Axes per run, labelled ``"patching_curve"``.
    """
    named = {name: effects_table(r, "patching") for name, r in _runs(runs).items()}
    for table in named.values():
        _quantity(quantity, table)
    colors = {**SEGMENT_COLORS, **_NAMED_COLORS}
    spare = ["#000000", "#F0E442", "#56B4E9", "#0072B2"]
    with style():
        fig, axes = side_by_side(len(named), 3.4, 2.5)
        for ax, (name, table) in zip(axes, named.items()):
            for k, (segment, rows) in enumerate(table.groupby("segment", sort=False)):
                rows = rows.sort_values("layer")
                color = colors.get(segment, spare[k % len(spare)])
                x, y = rows["layer"].to_numpy(int), rows[quantity].to_numpy(float)
                ax.plot(x, y, marker="o", markersize=3, color=color, label=segment)
                if quantity == "d_score" and {"low", "high"} <= set(rows.columns):
                    ax.fill_between(x, rows["low"].to_numpy(float), rows["high"].to_numpy(float), color=color,
                                    alpha=0.18, linewidth=0)
            ax.axhline(0, color="#777777", linewidth=0.6)
            layers = sorted(table["layer"].unique())
            ax.set_xticks(layers)
            ax.set_xlabel("hidden index patched (0 = decoder input)")
            n = int(table["n"].max()) if "n" in table.columns else 0
            ax.set_title(f"{name}{' (' if name else ''}n = {n}{')' if name else ''}", loc="left")
            ax.set_label("patching_curve")
        axes[0].set_ylabel(QUANTITIES[quantity])
        axes[-1].legend(title="patched positions", frameon=False, loc="best")
    if path is not None:
        save(fig, path)
    return fig
