"""Figures of the paper's four dataset-level answers, for one run and for several runs compared.

Each draws tables a run (:func:`vlm_lens.run`) already holds, and nothing else:

=========================  =====================================================  =================================
figure                     answers                                                table
=========================  =====================================================  =================================
:func:`run_first_top1`     at which layer does the level become the lens's top-1  ``quality.first_top1``
:func:`run_lens_agreement` how often does each layer's lens agree with the answer ``quality.layers``
:func:`run_segment_lines`  attention to the image vs the description, per layer   ``attention.layers``
:func:`run_instability`    how unstable is the level under sampling               ``instability.summary``, ``layers``
:func:`run_score_scatter`  how well does the Q-Align score follow the MOS         ``quality.samples``, ``correlations``
=========================  =====================================================  =================================

Intervals are the ones the tables carry (Wilson for shares, Student-t for means, bootstrap for correlations).
:func:`~vlm_lens.plot.analyses_compared.compare_analyses` draws any of them for several runs (one colour per run),
marking the layers whose paired difference is significant after Holm's correction.

Example:
    >>> fig = vl.plot.run_first_top1("runs/one-stage")                                            # doctest: +SKIP
    >>> fig = vl.plot.compare_runs({"one": r1, "two": r2}, "segment_lines", comparison=c)         # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..biqa.vocabulary import LEVELS
from ..core.errors import VlmLensError
from .style import SEGMENT_COLORS, new_figure, save, style, thin_ticks

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["SHARES", "run_first_top1", "run_instability", "run_lens_agreement", "run_score_scatter",
           "run_segment_lines"]

#: What each share of ``quality.layers`` says, in the figures' words.
SHARES = {"level_top1": "lens top-1 is the level word", "level_agree": "lens's best level = the answer's",
          "agree": "lens top-1 = final top-1"}
_FIX = {"quality": "vl.analyses.Quality()", "attention": "vl.analyses.Attention()",
        "instability": "vl.analyses.Instability(k=5)"}


def _result(run: Any):
    from ..runs.engine import RunResult

    if isinstance(run, (str, Path)):
        return RunResult.load(run)
    if isinstance(run, RunResult):
        return run
    raise VlmLensError(f"run: expected a RunResult or a run folder, got {type(run).__name__}.")


def _table(run: Any, key: str) -> pd.DataFrame:
    result = _result(run)
    if key not in result.tables:
        prefix = key.split(".")[0]
        raise VlmLensError(f"this run has no {key!r} table (it has {sorted(result.tables) or 'none'}); add the "
                           f"analysis that writes it: vl.run(model, dataset, analyses=[..., "
                           f"{_FIX.get(prefix, prefix)}], out=...). A run of an earlier version lacks it: run again.")
    return result.tables[key]


def _palette(n: int) -> list:
    import seaborn as sns

    return list(sns.color_palette("colorblind", max(n, 1)))


def _layer_axis(ax: "Axes", layers: Sequence[int], label: str) -> None:
    keep = thin_ticks(len(layers), 20)
    ax.set_xticks([layers[i] for i in keep], [str(layers[i]) for i in keep])
    ax.set_xlabel(label)


def _legend(ax: "Axes") -> None:
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _saved(fig: "Figure", path: str | Path | None) -> "Figure":
    if path is not None:
        save(fig, path)
    return fig


# ------------------------------------------------------------------------------------------- one quantity
def _draw_first_top1(ax: "Axes", tables: Mapping[str, pd.DataFrame]) -> None:
    layers = sorted({int(l) for t in tables.values() for l in t["layer"].dropna()})
    slots = [*layers, None]
    width = 0.8 / len(tables)
    for k, ((name, table), colour) in enumerate(zip(tables.items(), _palette(len(tables)))):
        share = {None if pd.isna(l) else int(l): s for l, s in zip(table["layer"], table["share"])}
        x = np.arange(len(slots)) + (k - (len(tables) - 1) / 2) * width
        ax.bar(x, [share.get(s, 0.0) for s in slots], width=width, color=colour, label=name,
               gid=f"first_top1:{name}")
    ax.set_xticks(range(len(slots)), [str(s) for s in layers] + ["never"])
    ax.set_xlabel("layer (0 = decoder input)")
    ax.set_ylabel("share of samples with a level")
    ax.set_ylim(0, 1)
    ax.set_label("first_top1")


def _draw_shares(ax: "Axes", tables: Mapping[str, pd.DataFrame], share: str, stars: Sequence[int] = ()) -> None:
    for (name, table), colour in zip(tables.items(), _palette(len(tables))):
        table = table.sort_values("layer")
        ax.plot(table["layer"], table[share], marker="o", markersize=2.5, color=colour, label=name)
        if f"{share}_low" in table.columns:
            ax.fill_between(table["layer"], table[f"{share}_low"].astype(float), table[f"{share}_high"].astype(float),
                            color=colour, alpha=0.18, linewidth=0)
    _stars(ax, stars, 1.04)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("share of samples")


def _draw_segments(ax: "Axes", tables: Mapping[str, pd.DataFrame], segment: str, stars: Sequence[int] = (),
                   by_run: bool = True) -> None:
    colours = _palette(len(tables)) if by_run else [SEGMENT_COLORS.get(segment, "grey")] * len(tables)
    for (name, table), colour in zip(tables.items(), colours):
        rows = table[table["segment"] == segment].sort_values("layer")
        ax.plot(rows["layer"], rows["mass"], marker="o", markersize=2.5, color=colour,
                label=name if by_run else segment)
        ax.fill_between(rows["layer"], rows["low"].astype(float), rows["high"].astype(float), color=colour,
                        alpha=0.18, linewidth=0)
    _stars(ax, stars, ax.get_ylim()[1])
    ax.set_ylabel("attention mass")


def _stars(ax: "Axes", layers: Sequence[int], y: float) -> None:
    for layer in layers:
        ax.text(layer, y, "*", ha="center", va="bottom", fontsize=10, color="black", gid=f"significant:{layer}")


def _significant_layers(comparison: Any, table: str, alpha: float, **match: Any) -> list[int]:
    if comparison is None or table not in comparison.tables:
        return []
    frame = comparison.tables[table]
    keep = frame["p_adjusted"] < alpha
    for column, value in match.items():
        keep &= frame[column] == value
    return sorted({int(l) for l in frame.loc[keep, "layer"]})


# ------------------------------------------------------------------------------------------------ one run
def run_first_top1(run: Any, *, path: str | Path | None = None) -> "Figure":
    """Distribution of the layer where the level first becomes the lens's top-1 at the decision position.

    Args:
        run: A RunResult with the quality analysis (with its lens, the default), or its folder.
        path: Also save the figure there.

    Returns:
        The Figure; its Axes is labelled ``"first_top1"``: one bar per layer (and "never"), height the share of
        samples with a level (the ``share`` column of ``quality.first_top1``).

    Example:
        >>> fig = run_first_top1("runs/one-stage", path="first_top1.png")          # doctest: +SKIP
    """
    table = _table(run, "quality.first_top1")
    with style():
        fig = new_figure(5.4, 3.2)
        ax = fig.add_subplot()
        _draw_first_top1(ax, {"run": table})
        ax.set_title(f"where the level becomes the lens's top-1 (decision position)\n{int(table['n'].sum())} "
                     "samples with a level")
    return _saved(fig, path)


def run_lens_agreement(run: Any, *, shares: Sequence[str] = tuple(SHARES), path: str | Path | None = None
                       ) -> "Figure":
    """Per layer, the share of samples whose logit lens at the decision position agrees with the answer, with 95%
    Wilson intervals: its top-1 is the level word, its best level word is the final one, its top-1 is the final
    top-1.

    Args:
        run: A RunResult with the quality analysis, or its folder.
        shares: Which of :data:`SHARES` to draw.
        path: Also save the figure there.

    Returns:
        The Figure; its Axes is labelled ``"lens_agreement"``, one line (and band) per share.

    Example:
        >>> fig = run_lens_agreement(r, shares=["level_top1"])                       # doctest: +SKIP
    """
    table = _table(run, "quality.layers")
    unknown = [s for s in shares if s not in SHARES or s not in table.columns]
    if unknown or not shares:
        raise VlmLensError(f"shares={list(shares)}: expected some of {[s for s in SHARES if s in table.columns]}.")
    with style():
        fig = new_figure(6.4, 3.2)
        ax = fig.add_subplot()
        for share, colour in zip(shares, _palette(len(shares))):
            rows = table.sort_values("layer")
            ax.plot(rows["layer"], rows[share], marker="o", markersize=2.5, color=colour, label=SHARES[share])
            if f"{share}_low" in rows.columns:
                ax.fill_between(rows["layer"], rows[f"{share}_low"].astype(float),
                                rows[f"{share}_high"].astype(float), color=colour, alpha=0.18, linewidth=0)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("share of samples")
        _layer_axis(ax, sorted(int(l) for l in table["layer"]), "layer (0 = decoder input)")
        _legend(ax)
        ax.set_label("lens_agreement")
        ax.set_title(f"logit lens at the decision position, per layer\n{int(table['n'].max())} samples, 95% "
                     "Wilson intervals")
    return _saved(fig, path)


def run_segment_lines(run: Any, *, segments: Sequence[str] = ("image", "description"), analysis: str = "attention",
                      path: str | Path | None = None) -> "Figure":
    """Per layer, the mean attention mass of the decision position on chosen segments (default: the image
    against the description), with 95% Student-t intervals over samples.

    Args:
        run: A RunResult with the attention analysis, or its folder.
        segments: Segments to draw (of system, image, instruction, description, answer).
        analysis: The attention analysis' table prefix (a second reading: the name given with ``.named``).
        path: Also save the figure there.

    Returns:
        The Figure; its Axes is labelled ``"segment_lines"``, one line (and band) per segment.

    Example:
        >>> fig = run_segment_lines(r, segments=["image", "description", "instruction"])  # doctest: +SKIP
    """
    table = _table(run, f"{analysis}.layers")
    _check_segments(table, segments)
    with style():
        fig = new_figure(5.8, 3.2)
        ax = fig.add_subplot()
        for segment in segments:
            _draw_segments(ax, {segment: table}, segment, by_run=False)
        _layer_axis(ax, sorted(int(l) for l in table["layer"].unique()), "layer (decoder block)")
        ax.set_ylim(bottom=0)
        _legend(ax)
        ax.set_label("segment_lines")
        ax.set_title(f"attention of the {_query(run, analysis)}: {' vs '.join(segments)}\nmean over "
                     f"{int(table['n'].max())} samples, 95% intervals")
    return _saved(fig, path)


def _check_segments(table: pd.DataFrame, segments: Sequence[str]) -> None:
    present = list(dict.fromkeys(table["segment"]))
    unknown = [s for s in segments if s not in present]
    if unknown or not segments:
        raise VlmLensError(f"segments={list(segments)}: expected some of {present}.")


def _query(run: Any, analysis: str) -> str:
    summary = _result(run).tables.get(f"{analysis}.summary")
    query = str(summary["query"].iloc[0]) if summary is not None and len(summary) else "decision"
    return {"decision": "decision position", "level": "level word", "last": "last position"}.get(
        query, f"position {query}")


def run_instability(run: Any, *, path: str | Path | None = None) -> "Figure":
    """How unstable the level is under sampling: the share of images whose level changes (95% Wilson interval),
    and per layer the size of the lens's candidate set at the decision positions of the repeats.

    Returns:
        The Figure; Axes ``"instability:changed"`` (one bar with its interval) and ``"instability:candidates"``
        (``distinct_top1`` and ``distinct_topk`` per layer).

    Example:
        >>> fig = run_instability("runs/unstable")                                    # doctest: +SKIP
    """
    summary, layers = _table(run, "instability.summary"), _table(run, "instability.layers")
    with style():
        fig = new_figure(8.0, 3.2)
        left, right = fig.subplots(1, 2, width_ratios=[1, 2.4])
        _draw_changed(left, {"run": summary.iloc[0]})
        left.set_xticks([])
        row = summary.iloc[0]
        left.set_title(f"{row['pct_changed']:.0f}% [{row.get('pct_changed_low', np.nan):.0f}, "
                       f"{row.get('pct_changed_high', np.nan):.0f}] change")
        for column, colour in zip(("distinct_top1", "distinct_topk"), _palette(2)):
            rows = layers.sort_values("layer")
            right.plot(rows["layer"], rows[column], marker="o", markersize=2.5, color=colour,
                       label=column.replace("distinct_", "distinct ").replace("topk", "top-k"))
        _layer_axis(right, sorted(int(l) for l in layers["layer"]), "layer (0 = decoder input)")
        right.set_ylabel("tokens over the repeats")
        right.set_ylim(bottom=0)
        _legend(right)
        right.set_label("instability:candidates")
        right.set_title("the lens's candidate set per layer")
        row = summary.iloc[0]
        fig.suptitle(f"instability over {int(row['k'])} sampled answers per image (temperature "
                     f"{row['temperature']:g}, top-p {row['top_p']:g}), {int(row['n_compared'])} images compared")
    return _saved(fig, path)


def _draw_changed(ax: "Axes", rows: Mapping[str, pd.Series]) -> None:
    for k, ((name, row), colour) in enumerate(zip(rows.items(), _palette(len(rows)))):
        value = float(row["pct_changed"])
        low, high = float(row.get("pct_changed_low", np.nan)), float(row.get("pct_changed_high", np.nan))
        ax.bar(k, value, color=colour, width=0.6, label=name, gid=f"changed:{name}")
        if np.isfinite(low):
            ax.errorbar(k, value, yerr=[[value - low], [high - value]], color="black", capsize=3, linewidth=1)
    ax.set_xticks(range(len(rows)), list(rows))
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of images whose level changes")
    ax.set_label("instability:changed")


def run_score_scatter(run: Any, *, path: str | Path | None = None) -> "Figure":
    """The Q-Align score of every sample against its MOS, coloured by the level read, with SRCC and PLCC (and
    their bootstrap intervals) from ``quality.correlations``.

    Returns:
        The Figure; its Axes is labelled ``"score_scatter"`` (x: MOS, y: Q-Align score), one point per sample
        with a level.

    Example:
        >>> fig = run_score_scatter("runs/one-stage")                                 # doctest: +SKIP
    """
    samples, correlations = _table(run, "quality.samples"), _table(run, "quality.correlations")
    if not len(correlations):
        raise VlmLensError("this run has no correlations: its dataset has no (or incomplete) scores; a scatter "
                           "against the MOS needs them.")
    with style():
        fig = new_figure(5.2, 3.6)
        ax = fig.add_subplot()
        _draw_scatter(ax, samples, correlations)
        _legend(ax)
    return _saved(fig, path)


def _draw_scatter(ax: "Axes", samples: pd.DataFrame, correlations: pd.DataFrame) -> None:
    rated = samples[samples["score"].notna()]
    order = [w for w in LEVELS if w in set(rated["level"])] + sorted(set(rated["level"]) - set(LEVELS))
    for level, colour in zip(order, _palette(len(order))):
        rows = rated[rated["level"] == level]
        ax.scatter(rows["mos"], rows["score"], s=12, color=colour, label=level, edgecolors="none",
                   gid=f"scatter:{level}")
    metric = correlations[correlations["score"] == "qalign"].set_index("metric")
    words = [f"{name} {metric.loc[key, 'value']:.3f}" + (f" [{metric.loc[key, 'low']:.2f}, "
                                                          f"{metric.loc[key, 'high']:.2f}]"
                                                          if np.isfinite(metric.loc[key, "low"]) else "")
             for key, name in (("srcc", "SRCC"), ("plcc", "PLCC")) if key in metric.index]
    ax.set_title(f"Q-Align score against MOS, {len(rated)} samples\n{', '.join(words)}")
    ax.set_xlabel("MOS")
    ax.set_ylabel("Q-Align score")
    ax.set_label("score_scatter")
