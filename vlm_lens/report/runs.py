"""``write_run_report``: one self-contained HTML page of dataset runs — the paper's answers as tables and figures.

Why: a trace report shows one image; the paper's claims are about datasets. This page gathers, for one run or
several runs of the same dataset (checkpoints compared), what :mod:`vlm_lens.plot.run_analyses` draws and the
tables behind it: SRCC / PLCC of the Q-Align score with the score-vs-MOS scatter, the layer where the level becomes
the lens's top-1, the lens's agreement per layer, the attention of the decision position on the image against the
description (and every head's mass), instability with its interval, and — for several runs — the paired tests with
Holm's correction and the list of significant differences (:func:`vlm_lens.compare`). A section whose analysis a
run lacks says which analysis to add instead of failing. Like the trace report, it loads nothing from anywhere.

Example:
    >>> write_run_report({"one-stage": "runs/a", "two-stage": "runs/b"}, "runs/report.html")   # doctest: +SKIP
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from ..core.errors import VlmLensError
from .html import TEMPLATES, _png, caption_of, figures_html, fill

__all__ = ["write_run_report"]

#: The sections of the page: title, what it answers, the table a run needs for it.
SECTIONS = (("scores", "Q-Align score against MOS", "quality.correlations"),
            ("first_top1", "Where the level becomes the lens's top-1", "quality.first_top1"),
            ("lens", "How often each layer's lens agrees with the answer", "quality.layers"),
            ("attention", "Attention of the decision position: image against description", "attention.layers"),
            ("instability", "Instability of the level under sampling", "instability.summary"))


def write_run_report(runs: Any, path: str | Path, *, comparison: Any = None, n_boot: int = 1000, seed: int = 0,
                     title: str | None = None, dpi: int = 110) -> Path:
    """Write the tables and figures of one run, or of several runs compared, as one self-contained HTML file.

    Args:
        runs: A :class:`~vlm_lens.RunResult` or run folder, or ``{name: run}`` of runs of the same dataset (the
            first is the reference of the comparison).
        path: The ``.html`` file to write (its folder is created).
        comparison: The :func:`vlm_lens.compare` of ``runs``; computed (with ``n_boot``, ``seed``) when several runs
            are given without it.
        title: Page title (default: the run names).
        dpi: Resolution of the embedded figures.

    Returns:
        The path written.

    Example:
        >>> write_run_report("runs/one-stage", "runs/one-stage/report.html")              # doctest: +SKIP
    """
    from ..biqa.comparison import compare
    from ..runs.engine import RunResult

    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise VlmLensError(f"path={str(path)!r}: a report is an HTML file; give it an .html suffix.")
    named = dict(runs) if isinstance(runs, Mapping) else {_name(runs): runs}
    if not named:
        raise VlmLensError("runs: expected a run, a run folder, or a dict of named runs; got an empty dict.")
    loaded = {str(k): r if isinstance(r, RunResult) else RunResult.load(r) for k, r in named.items()}
    if len(loaded) > 1 and comparison is None:
        comparison = compare(loaded, n_boot=n_boot, seed=seed)
    title = title or f"vlm_lens runs: {', '.join(loaded)}"
    body = _body(loaded, comparison, title, dpi)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(fill(TEMPLATES / "runs.html", title, body), encoding="utf-8")
    return path


def _name(run: Any) -> str:
    folder = getattr(run, "folder", None) or (Path(run) if isinstance(run, (str, Path)) else None)
    return Path(folder).name if folder is not None else "run"


def _body(runs: dict, comparison: Any, title: str, dpi: int) -> str:
    from .. import plot

    e = html.escape
    several = len(runs) > 1
    first = next(iter(runs.values()))
    rows = [("runs", ", ".join(runs)), ("dataset", first.meta.get("dataset", {}).get("name", "")),
            ("samples", ", ".join(f"{n}: {r.meta.get('n_done')} analysed, {r.meta.get('n_skipped')} skipped"
                                  for n, r in runs.items()))]
    meta = "".join(f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in rows)
    def pick(figure: str, single: Callable[[Any], Any]) -> Callable[[], Any]:
        """The comparison figure of several runs, or the single-run figure of one."""
        if several:
            return lambda: plot.compare_runs(runs, figure, comparison=comparison)
        return lambda: single(first)

    drawers: dict[str, list[tuple[str, Callable[[], Any]]]] = {
        "scores": [("score_scatter", pick("score_scatter", plot.run_score_scatter))],
        "first_top1": [("first_top1", pick("first_top1", plot.run_first_top1))],
        "lens": [("lens_agreement", pick("lens_agreement", plot.run_lens_agreement))],
        "attention": [("segment_lines", pick("segment_lines", plot.run_segment_lines))]
        + [(f"head_mass:{n}", (lambda r=r: plot.run_head_mass(r))) for n, r in runs.items()],
        "instability": [("instability", pick("instability", plot.run_instability))],
    }
    parts = []
    for key, heading, table in SECTIONS:
        missing = [n for n, r in runs.items() if table not in r.tables or not len(r.tables[table])]
        if missing:
            parts.append(f'<section id="{key}"><h2>{e(heading)}</h2><p class="hint">Not in {e(", ".join(missing))}: '
                         f"{e(_missing(table))}</p></section>")
            continue
        figures = []
        for name, draw in drawers[key]:
            fig = draw()
            figures.append((name, caption_of(fig), _png(fig, dpi)))
        parts.append(f'<section id="{key}"><h2>{e(heading)}</h2>{_tables(key, runs, comparison)}'
                     f'<div class="figures">{figures_html(figures)}</div></section>')
    if comparison is not None:
        parts.append(_significant(comparison))
    return (f'<header><h1>{e(title)}</h1><dl class="meta">{meta}</dl></header>\n<div class="wide" '
            f'style="padding-top:16px">{"".join(parts)}</div>')


def _missing(table: str) -> str:
    prefix = table.split(".")[0]
    fix = {"quality": "vl.analyses.Quality()", "attention": "vl.analyses.Attention()",
           "instability": "vl.analyses.Instability(k=5)"}[prefix]
    return f"this section needs the {table} table; run again with {fix} among the analyses (or the run's " \
           "dataset has no scores, for correlations)."


def _frame(frame: pd.DataFrame, digits: int = 4) -> str:
    return frame.round(digits).to_html(index=False, classes="data", border=0, na_rep="–")


def _tables(key: str, runs: dict, comparison: Any) -> str:
    def each(table: str, columns: list[str]) -> pd.DataFrame:
        frames = [r.tables[table].assign(run=n) for n, r in runs.items()]
        frame = pd.concat(frames, ignore_index=True)
        return frame[["run", *[c for c in columns if c in frame.columns]]]

    if key == "scores":
        out = _frame(each("quality.correlations", ["score", "metric", "value", "low", "high", "n", "n_missing"]))
        if comparison is not None and "correlation_differences" in comparison.tables:
            out += _frame(comparison.tables["correlation_differences"])
        return out
    if key == "first_top1":
        out = _frame(each("quality.first_top1", ["layer", "n", "share"]).pivot(
            index="layer", columns="run", values="share").reset_index().rename_axis(None, axis=1))
        if comparison is not None and "first_top1_differences" in comparison.tables:
            out += _frame(comparison.tables["first_top1_differences"])
        return out
    if key == "instability":
        return _frame(each("instability.summary", ["n_compared", "pct_changed", "pct_changed_low",
                                                   "pct_changed_high", "mean_entropy_bits", "k", "temperature"]))
    return ""


def _significant(comparison: Any) -> str:
    e = html.escape
    table = comparison.tables.get("significant", pd.DataFrame())
    notes = "".join(f"<li>{e(n)}</li>" for n in comparison.notes)
    counts = {name: len(frame) for name, frame in comparison.tables.items() if name.endswith("_differences")}
    said = ", ".join(f"{name}: {n} tests" for name, n in counts.items())
    body = _frame(table) if len(table) else "<p>None after the correction.</p>"
    return (f'<section id="significant"><h2>Significant differences (Holm-corrected within each table)</h2>'
            f'<p class="hint">Each run against {e(comparison.runs[0])}, paired per sample; {e(said)}.</p>{body}'
            + (f'<ul class="notes">{notes}</ul>' if notes else "") + "</section>")
