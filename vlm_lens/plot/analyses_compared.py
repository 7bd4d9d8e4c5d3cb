"""The paper's dataset-level figures for several runs at once: one panel per quantity, one colour per run, and the
layers a comparison finds significant marked.

Why apart from :mod:`vlm_lens.plot.run_analyses`: one run's figure shows a quantity with its interval; a comparison
must also show which differences survive the correction for the many layers tested. Given the
:class:`~vlm_lens.biqa.comparison.Comparison` of the runs, a ``*`` marks every layer whose paired difference has a
Holm-adjusted p-value below ``alpha``, and the titles quote the tests; it computes none of them.

Example:
    >>> fig = compare_analyses({"one": r1, "two": r2}, "segment_lines", comparison=c)          # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ..core.errors import VlmLensError
from .run_analyses import (
    SHARES,
    _check_segments,
    _draw_changed,
    _draw_first_top1,
    _draw_scatter,
    _draw_segments,
    _draw_shares,
    _layer_axis,
    _legend,
    _query,
    _saved,
    _significant_layers,
    _stars,
    _table,
)
from .style import new_figure, style

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["ANALYSIS_FIGURES", "compare_analyses"]


def _first(runs, names, *, comparison=None, alpha: float = 0.05) -> "Figure":
    tables = {n: _table(r, "quality.first_top1") for n, r in zip(names, runs)}
    fig = new_figure(6.4, 3.4)
    ax = fig.add_subplot()
    _draw_first_top1(ax, tables)
    _legend(ax)
    title = "where the level becomes the lens's top-1 (decision position)"
    if comparison is not None and "first_top1_differences" in comparison.tables:
        rows = comparison.tables["first_top1_differences"]
        title += "\n" + "; ".join(f"{r.b} − {r.a}: {r.diff:+.2f} layers, Holm p = {r.p_adjusted:.3g}"
                                  for r in rows.itertuples())
    ax.set_title(title)
    return fig


def _agreement(runs, names, *, shares: Sequence[str] = tuple(SHARES), comparison=None,
               alpha: float = 0.05) -> "Figure":
    tables = {n: _table(r, "quality.layers") for n, r in zip(names, runs)}
    fig = new_figure(1.4 + 3.4 * len(shares), 3.4)
    axes = fig.subplots(1, len(shares), sharey=True, squeeze=False)[0]
    for ax, share in zip(axes, shares):
        _draw_shares(ax, tables, share, _significant_layers(comparison, "layer_differences", alpha, quantity=share))
        _layer_axis(ax, sorted({int(l) for t in tables.values() for l in t["layer"]}), "layer (0 = decoder input)")
        ax.set_title(SHARES[share])
        ax.set_label(f"lens_agreement:{share}")
    _legend(axes[-1])
    fig.suptitle("logit lens at the decision position, per layer (95% Wilson intervals"
                 + ("; * Holm-corrected paired difference" if comparison is not None else "") + ")")
    return fig


def _segments(runs, names, *, segments: Sequence[str] = ("image", "description"), analysis: str = "attention",
              comparison=None, alpha: float = 0.05) -> "Figure":
    tables = {n: _table(r, f"{analysis}.layers") for n, r in zip(names, runs)}
    for table in tables.values():
        _check_segments(table, segments)
    fig = new_figure(1.4 + 3.4 * len(segments), 3.4)
    axes = fig.subplots(1, len(segments), sharey=True, squeeze=False)[0]
    for ax, segment in zip(axes, segments):
        _draw_segments(ax, tables, segment)
        ax.set_ylim(0, max(ax.get_ylim()[1], 0.05) * 1.08)
        _stars(ax, _significant_layers(comparison, f"{analysis}_differences", alpha, segment=segment),
               ax.get_ylim()[1] * 0.93)
        _layer_axis(ax, sorted({int(l) for t in tables.values() for l in t["layer"]}), "layer (decoder block)")
        ax.set_title(segment)
        ax.set_label(f"segment_lines:{segment}")
    _legend(axes[-1])
    fig.suptitle(f"attention of the {_query(runs[0], analysis)} by layer, mean and 95% interval over samples"
                 + ("; * Holm-corrected paired difference" if comparison is not None else ""))
    return fig


def _unstable(runs, names, *, comparison=None, alpha: float = 0.05) -> "Figure":
    rows = {n: _table(r, "instability.summary").iloc[0] for n, r in zip(names, runs)}
    fig = new_figure(1.6 + 1.1 * len(rows), 3.4)
    ax = fig.add_subplot()
    _draw_changed(ax, rows)
    title = "level changes under sampling\n(95% Wilson intervals)"
    if comparison is not None and "instability_differences" in comparison.tables:
        diff = comparison.tables["instability_differences"]
        changed = diff[diff["quantity"] == "pct_changed"]
        title += "\n" + "; ".join(f"{r.b}: McNemar Holm p = {r.p_adjusted:.3g}" for r in changed.itertuples())
    ax.set_title(title)
    return fig


def _scatter(runs, names, *, comparison=None, alpha: float = 0.05) -> "Figure":
    fig = new_figure(0.8 + 4.2 * len(runs), 3.8)
    axes = fig.subplots(1, len(runs), sharex=True, sharey=True, squeeze=False)[0]
    for ax, name, r in zip(axes, names, runs):
        correlations = _table(r, "quality.correlations")
        if not len(correlations):
            raise VlmLensError(f"run {name!r} has no correlations (its dataset has no scores).")
        _draw_scatter(ax, _table(r, "quality.samples"), correlations)
        ax.set_title(f"{name}: {ax.get_title()}")
        ax.set_label(f"score_scatter:{name}")
    _legend(axes[-1])
    return fig


#: The figures :func:`compare_analyses` draws, by name (also figures of :func:`vlm_lens.plot.compare_runs`).
ANALYSIS_FIGURES: dict[str, Callable[..., "Figure"]] = {
    "first_top1": _first, "lens_agreement": _agreement, "segment_lines": _segments, "instability": _unstable,
    "score_scatter": _scatter,
}


def compare_analyses(runs: Mapping[str, Any], figure: str, *, comparison: Any = None, alpha: float = 0.05,
                     path: str | Path | None = None, **kwargs: Any) -> "Figure":
    """Draw one of :data:`ANALYSIS_FIGURES` for two or more runs, one colour per run.

    Args:
        runs: ``{name: run}`` (RunResults or run folders) of the same dataset.
        figure: ``"first_top1"``, ``"lens_agreement"``, ``"segment_lines"``, ``"instability"`` or
            ``"score_scatter"``.
        comparison: The :func:`vlm_lens.compare` of these runs, to mark significant differences (Holm-adjusted
            p below ``alpha``) with ``*``, and quote the tests in the titles.
        alpha: Significance level of the marks.
        path: Also save the figure there.
        **kwargs: Options of the figure (``shares=``, ``segments=``, ``analysis=``).

    Example:
        >>> fig = compare_analyses({"one": r1, "two": r2}, "lens_agreement", comparison=c)   # doctest: +SKIP
    """
    if figure not in ANALYSIS_FIGURES:
        raise VlmLensError(f"figure={figure!r}: expected one of {', '.join(ANALYSIS_FIGURES)}.")
    if not isinstance(runs, Mapping) or len(runs) < 2:
        raise VlmLensError("runs: expected a dict of at least two named runs, e.g. {'one-stage': run_a, "
                           "'two-stage': run_b}.")
    with style():
        fig = ANALYSIS_FIGURES[figure](list(runs.values()), [str(n) for n in runs], comparison=comparison,
                                       alpha=alpha, **kwargs)
    return _saved(fig, path)
