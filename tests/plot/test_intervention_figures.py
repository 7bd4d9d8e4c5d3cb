"""Figures of intervention effects draw exactly the rows of the effect tables (cells, lines, annotations), on one
colour scale across runs, and refuse tables that are not effect tables; the trace report lists a trace's
interventions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import PROMPT, random_image

import vlm_lens as vl
from vlm_lens.plot.interventions import knockout_effects, patching_curve
from vlm_lens.report import write_report


def knockout_table(scale: float) -> pd.DataFrame:
    rows = []
    for i, segment in enumerate(["image", "instruction", "description"]):
        for j, first in enumerate([1, 3, 5, 7]):
            d = scale * (i - 1) * (j + 1) / 10
            rows.append({"segment": segment, "window": f"{first}-{first + 1}", "first": first, "last": first + 1,
                         "n": 20, "d_score": d, "low": d - 0.1, "high": d + 0.1, "p": 0.01 if i == 2 else 0.5,
                         "abs_d_score": abs(d), "d_logp": -abs(d), "flip_rate": min(1.0, abs(d))})
    return pd.DataFrame(rows)


def patching_table() -> pd.DataFrame:
    rows = [{"segment": s, "layer": l, "n": 10, "d_score": (k + 1) * l / 10, "low": 0.0, "high": 1.0, "p": 0.5,
             "abs_d_score": (k + 1) * l / 10, "d_logp": 0.0, "flip_rate": 0.0, "recovered": l / 8, "to_source": 0.5}
            for k, s in enumerate(["image", "decision"]) for l in range(9)]
    return pd.DataFrame(rows)


def test_knockout_heatmap_cells_are_the_table():
    one, two = knockout_table(1.0), knockout_table(2.0)
    fig = knockout_effects({"one-stage": one, "two-stage": two}, "d_score")
    heat = [ax for ax in fig.axes if ax.get_label() == "knockout_effects"]
    assert [ax.get_title(loc="left") for ax in heat] == ["one-stage (n = 20)", "two-stage (n = 20)"]
    for ax, table in zip(heat, (one, two)):
        grid = table.pivot(index="segment", columns="first", values="d_score").loc[
            ["image", "instruction", "description"]].to_numpy()
        np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), grid)
        texts = [t.get_text() for t in ax.texts]
        assert texts.count(f"{grid[2, 3]:+.2f}*") == 1 and f"{grid[0, 0]:+.2f}" in texts  # p < 0.05 starred
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1-2", "3-4", "5-6", "7-8"]
    norms = {(ax.images[0].norm.vmin, ax.images[0].norm.vmax) for ax in heat}
    assert norms == {(-0.8, 0.8)}  # one symmetric scale: the largest |d_score| of both runs
    flips = knockout_effects(one, "flip_rate")
    assert (flips.axes[0].images[0].norm.vmin, flips.axes[0].images[0].norm.vmax) == (0, 1)


def test_patching_curve_lines_are_the_table():
    table = patching_table()
    fig = patching_curve(table, "recovered")
    ax = fig.axes[0]
    assert ax.get_label() == "patching_curve"
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert sorted(lines) == ["decision", "image"]
    for segment, line in lines.items():
        rows = table[table.segment == segment].sort_values("layer")
        np.testing.assert_allclose(line.get_ydata(), rows.recovered)
        np.testing.assert_allclose(line.get_xdata(), rows.layer)
    assert lines["image"].get_color() != lines["decision"].get_color()


@pytest.mark.parametrize("call, match", [
    (lambda: knockout_effects(pd.DataFrame({"x": [1]})), r"the knockout.effects table lacks columns"),
    (lambda: knockout_effects(knockout_table(1.0), "recovered"), r"quantity='recovered': expected one of"),
    (lambda: patching_curve(knockout_table(1.0)), r"the patching.effects table lacks columns \['layer'\]"),
    (lambda: knockout_effects(42), r"run: expected a RunResult, a run folder or an knockout.effects table"),
    (lambda: knockout_effects({}), r"runs: the mapping is empty"),
])
def test_what_is_not_an_effect_table_is_refused(call, match):
    with pytest.raises(vl.VlmLensError, match=match):
        call()


def test_the_report_lists_the_interventions(models, tmp_path):
    m = models["mha"]
    t = vl.trace(m, random_image(3), PROMPT, generate=2,
                 intervene=[vl.knockout("response", "image", layers=[1], heads=[0]), vl.ablate([2], 0, "mean")])
    page = write_report(t, tmp_path / "r.html", figures=False).read_text()
    image = [p for p, s in enumerate(t.tokens.segment) if s == "image"]
    assert f"knockout: positions {t.meta['interventions'][0]['resolved']['queries']} may not attend to {image}" in page
    assert "ablation: positions [2] ([2]) at hidden indices [0], value mean" in page
