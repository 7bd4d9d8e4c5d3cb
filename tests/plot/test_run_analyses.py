"""Figures of the paper's dataset-level answers draw exactly the run's tables (bars, lines, bands, points), compare
several runs on shared axes, mark the layers a comparison finds significant after Holm's correction, refuse runs
without the tables they need, and keep every label inside the figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from test_reading import assert_nothing_clipped

import vlm_lens as vl
from vlm_lens import plot
from vlm_lens.core.errors import VlmLensError


def axes(fig, label):
    found = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(found) == 1, [ax.get_label() for ax in fig.axes]
    return found[0]


def test_attention_layers_table_is_the_mean_over_samples_with_a_t_interval(zoo_runs):
    r = zoo_runs["one-stage"]
    table = r["attention.layers"].set_index(["layer", "segment"])
    for (layer, segment), group in r["attention.samples"].groupby(["layer", "segment"]):
        x = group["mass"].to_numpy()
        low, high = scipy.stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=scipy.stats.sem(x))
        assert table.loc[(layer, segment), ["mass", "low", "high"]].tolist() == pytest.approx([x.mean(), low, high])


def test_first_top1_bars_are_the_shares(zoo_runs):
    r = zoo_runs["one-stage"]
    ax = axes(plot.run_first_top1(r), "first_top1")
    table = r["quality.first_top1"]
    expected = table.set_index(table["layer"].astype(object).where(table["layer"].notna(), "never"))["share"]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[-1] == "never" and labels[:-1] == [str(int(l)) for l in table["layer"].dropna()]
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == pytest.approx([expected[int(x)] if x != "never" else expected["never"] for x in labels])


def test_lens_agreement_lines_and_bands_are_the_layers_table(zoo_runs):
    r = zoo_runs["one-stage"]
    ax = axes(plot.run_lens_agreement(r), "lens_agreement")
    table = r["quality.layers"].sort_values("layer")
    for line, share in zip(ax.get_lines(), ("level_top1", "level_agree", "agree")):
        np.testing.assert_allclose(line.get_ydata(), table[share].to_numpy(float))
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(table["level_top1_low"].min()) and \
        band.max() == pytest.approx(table["level_top1_high"].max())
    with pytest.raises(VlmLensError, match="shares"):
        plot.run_lens_agreement(r, shares=["kl"])


def test_segment_lines_are_the_attention_layers_table(zoo_runs):
    r = zoo_runs["two-stage"]
    ax = axes(plot.run_segment_lines(r), "segment_lines")
    table = r["attention.layers"]
    for line, segment in zip(ax.get_lines(), ("image", "description")):
        rows = table[table.segment == segment].sort_values("layer")
        np.testing.assert_allclose(line.get_ydata(), rows["mass"].to_numpy())
        assert line.get_label() == segment
    assert "decision position" in ax.get_title() and "image vs description" in ax.get_title()
    with pytest.raises(VlmLensError, match="segments"):
        plot.run_segment_lines(r, segments=["response"])


def test_instability_bar_and_candidates_are_the_tables(zoo_runs):
    r = zoo_runs["one-stage"]
    fig = plot.run_instability(r)
    summary = r["instability.summary"].iloc[0]
    assert axes(fig, "instability:changed").patches[0].get_height() == pytest.approx(summary.pct_changed)
    lines = axes(fig, "instability:candidates").get_lines()
    layers = r["instability.layers"].sort_values("layer")
    np.testing.assert_allclose(lines[0].get_ydata(), layers["distinct_top1"].to_numpy(float))
    np.testing.assert_allclose(lines[1].get_ydata(), layers["distinct_topk"].to_numpy(float))


def test_score_scatter_points_are_the_samples(zoo_runs):
    r = zoo_runs["one-stage"]
    ax = axes(plot.run_score_scatter(r), "score_scatter")
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    samples = r["quality.samples"].dropna(subset=["score"])
    assert sorted(map(tuple, points.round(9))) == sorted(zip(samples.mos.round(9), samples.score.round(9)))
    srcc = r["quality.correlations"].query("score == 'qalign' and metric == 'srcc'").value.iloc[0]
    assert f"SRCC {srcc:.3f}" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [w for w in vl.biqa.LEVELS
                                                                   if w in set(samples.level)]


def test_runs_compared_share_axes_and_mark_the_significant_layers(zoo_runs):
    c = vl.compare(zoo_runs, n_boot=20)
    fig = plot.compare_runs(zoo_runs, "segment_lines", comparison=c, alpha=0.9)
    for segment in ("image", "description"):
        ax = axes(fig, f"segment_lines:{segment}")
        assert [line.get_label() for line in ax.get_lines()] == list(zoo_runs)
        for line, r in zip(ax.get_lines(), zoo_runs.values()):
            rows = r["attention.layers"].query("segment == @segment").sort_values("layer")
            np.testing.assert_allclose(line.get_ydata(), rows["mass"].to_numpy())
        diff = c["attention_differences"].query("segment == @segment and p_adjusted < 0.9")
        stars = sorted(int(t.get_gid().split(":")[1]) for t in ax.texts if (t.get_gid() or "").startswith("sig"))
        assert stars == sorted(diff["layer"].astype(int).tolist())
    agree = plot.compare_runs(zoo_runs, "lens_agreement", comparison=c)
    assert {ax.get_label() for ax in agree.axes} >= {f"lens_agreement:{s}" for s in ("level_top1", "agree")}
    first = axes(plot.compare_runs(zoo_runs, "first_top1", comparison=c), "first_top1")
    assert {b.get_gid() for b in first.patches} == {f"first_top1:{n}" for n in zoo_runs}
    assert "Holm p" in first.get_title()
    for name in ("instability", "score_scatter"):
        assert plot.compare_runs(zoo_runs, name).axes
    with pytest.raises(VlmLensError, match="at least two"):
        plot.compare_runs({"one": zoo_runs["one-stage"]}, "first_top1")


def test_a_run_without_the_table_says_which_analysis_to_add(models):
    from vlm_lens.biqa.analyses import Attention

    ds = vl.datasets.from_images([np.zeros((20, 20, 3), np.uint8)])
    only = vl.run(models["mha"], ds, [Attention()], progress=False)
    with pytest.raises(VlmLensError, match=r"Quality\(\)"):
        plot.run_first_top1(only)
    with pytest.raises(VlmLensError, match=r"Instability"):
        plot.run_instability(only)
    bare = vl.RunResult({**only.tables, "quality.samples": pd.DataFrame(), "quality.correlations": pd.DataFrame()},
                        only.skipped, only.meta)
    with pytest.raises(VlmLensError, match="no correlations"):
        plot.run_score_scatter(bare)


def test_run_figures_read_well(zoo_runs):
    r = zoo_runs["one-stage"]
    for fig in (plot.run_first_top1(r), plot.run_lens_agreement(r), plot.run_segment_lines(r),
                plot.run_instability(r), plot.run_score_scatter(r), plot.run_head_mass(r),
                plot.compare_runs(zoo_runs, "segment_lines"), plot.compare_runs(zoo_runs, "score_scatter")):
        assert_nothing_clipped(fig)
