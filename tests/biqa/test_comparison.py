"""compare(): a run compared with itself differs by exactly zero (p = 1); two checkpoints' aligned tables equal
what each run says on its own; samples only one run has are left out and said so; every table of differences is
Holm-corrected and the significant ones are listed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import random_image

from vlm_lens.biqa.attention import Attention
from vlm_lens.biqa.comparison import SIGNIFICANT_COLUMNS, compare
from vlm_lens.biqa.instability import Instability
from vlm_lens.biqa.quality import Quality
from vlm_lens.core.errors import VlmLensError
from vlm_lens.runs.datasets import from_images
from vlm_lens.runs.engine import RunResult, run
from vlm_lens.runs.stats import holm, mean_interval

DIFFERENCES = {"correlation_differences": "diff", "layer_differences": "diff", "attention_differences": "diff",
               "instability_differences": "diff"}


@pytest.fixture(scope="module")
def runs(models, tmp_path_factory):
    ds = from_images([random_image(70 + k, (30 + 6 * k, 44)) for k in range(5)], [1.0, 4.0, 2.5, 5.0, 3.0])
    root = tmp_path_factory.mktemp("compare")
    analyses = lambda: [Quality(n_boot=20), Attention(), Instability(k=2, temperature=1.5)]  # noqa: E731
    return {name: run(models[name], ds, analyses(), out=root / name, batch_size=5, progress=False)
            for name in ("mha", "gqa")}


def test_a_run_compared_with_itself_differs_by_nothing(runs):
    c = compare({"a": runs["mha"], "again": runs["mha"]}, n_boot=20)
    for table, column in DIFFERENCES.items():
        frame = c[table]
        assert len(frame) and frame[column].abs().max() == 0, table
        assert frame.p.dropna().eq(1.0).all(), table
    assert c.notes == []
    assert repr(c) == f"Comparison(runs=['a', 'again'], tables={sorted(c.tables)}, notes=0)"


def test_two_checkpoints_align_with_what_each_run_says(runs, tmp_path):
    a, b = runs["mha"], runs["gqa"]
    c = compare({"one": a, "two": str(b.folder)}, n_boot=20)
    assert c.runs == ["one", "two"]
    assert any("different layers" in note for note in c.notes)  # 2 vs 3 decoder layers

    corr = c["correlations"].set_index(["run", "score", "metric"]).value
    diffs = c["correlation_differences"].set_index(["score", "metric"])["diff"]
    for (score, metric), diff in diffs.items():
        assert diff == pytest.approx(corr["two", score, metric] - corr["one", score, metric], abs=1e-12)
    own = a["quality.correlations"].set_index(["score", "metric"]).value
    np.testing.assert_allclose(corr["one"].to_numpy(), own.to_numpy(), atol=1e-12)

    layers = c["layers"].set_index(["run", "layer"])
    own_layers = a["quality.layers"].set_index("layer")
    shared = layers.loc["one"].index
    np.testing.assert_allclose(layers.loc["one"].kl, own_layers.loc[shared].kl, atol=1e-12)
    assert c["layer_differences"].layer.unique().tolist() == list(shared)

    att = c["attention"].set_index(["run", "layer", "segment"]).mass
    own_att = b["attention.samples"].groupby(["layer", "segment"]).mass.mean()
    np.testing.assert_allclose(att.loc["two"].sort_index().to_numpy(), own_att.sort_index().to_numpy(), atol=1e-12)

    inst = c["instability"].set_index("run")
    for name, r in (("one", a), ("two", b)):
        expected = r["instability.summary"].pct_changed.iloc[0]
        assert inst.loc[name, "pct_changed"] == pytest.approx(expected, nan_ok=True)

    folder = c.save(tmp_path / "cmp")
    assert json.loads((folder / "comparison.json").read_text())["runs"] == ["one", "two"]
    assert pd.read_parquet(folder / "layer_differences.parquet").equals(c["layer_differences"])


def test_samples_one_run_lacks_are_left_out(runs):
    a, b = runs["mha"], runs["gqa"]
    fewer = {name: (frame[frame["id"] != "2"] if "id" in frame.columns else frame) for name, frame in b.tables.items()}
    c = compare({"a": a, "b": RunResult(fewer, b.skipped, b.meta)}, n_boot=10)
    assert any("aligned on 4 samples" in note for note in c.notes)
    assert c["samples"].groupby("run").size().tolist() == [4, 4]
    assert c["correlation_differences"].n.eq(4).all() and c["attention_differences"].n.eq(4).all()


def test_bad_comparisons_are_refused(runs):
    with pytest.raises(VlmLensError, match="at least two named runs"):
        compare({"only": runs["mha"]})
    dmos = RunResult(runs["gqa"].tables, runs["gqa"].skipped,
                     {**runs["gqa"].meta, "dataset": {**runs["gqa"].meta["dataset"], "higher_is_better": False}})
    with pytest.raises(VlmLensError, match="score directions"):
        compare({"a": runs["mha"], "b": dmos})
    with pytest.raises(VlmLensError, match="no finished run"):
        compare({"a": runs["mha"], "b": "/nonexistent/run"})


def test_every_difference_table_is_holm_corrected_and_the_significant_ones_are_listed(runs):
    c = compare({"one": runs["mha"], "two": runs["gqa"]}, n_boot=20, alpha=0.5)
    listed = []
    for table, frame in c.tables.items():
        if table.endswith("_differences"):
            np.testing.assert_allclose(frame.p_adjusted.to_numpy(float), holm(frame.p.to_numpy(float)))
            listed += [(table, d, p) for d, p in zip(frame["diff"], frame.p_adjusted) if p < 0.5]
    significant = c["significant"]
    assert sorted(zip(significant.table, significant["diff"], significant.p_adjusted)) == sorted(listed)
    assert (significant.p_adjusted < 0.5).all() and significant.what.str.len().gt(0).all()
    none = compare({"a": runs["mha"], "again": runs["mha"]}, n_boot=20)
    assert none["significant"].empty and list(none["significant"].columns) == SIGNIFICANT_COLUMNS
    with pytest.raises(VlmLensError, match="alpha"):
        compare(runs, alpha=5)


def test_first_top1_and_attention_intervals_equal_each_run(runs):
    a, b = runs["mha"], runs["gqa"]
    c = compare({"one": a, "two": b}, n_boot=20)
    first = c["first_top1"]
    for name, r in (("one", a), ("two", b)):
        own = r["quality.first_top1"]
        mine = first[first.run == name]
        assert mine.n.sum() == own.n.sum() and mine.share.sum() == pytest.approx(1.0)
    diff = c["first_top1_differences"].iloc[0]
    x, y = a["quality.samples"].first_top1.to_numpy(float), b["quality.samples"].first_top1.to_numpy(float)
    both = np.isfinite(x) & np.isfinite(y)
    assert diff.n == both.sum() and diff.never_a == int(np.isnan(x).sum())
    att = c["attention"].set_index(["run", "layer", "segment"])
    for (layer, segment), group in a["attention.samples"].groupby(["layer", "segment"]):
        mean, low, high = mean_interval(group.mass.to_numpy())
        assert att.loc[("one", layer, segment), ["mass", "low", "high"]].tolist() == pytest.approx(
            [mean, low, high], nan_ok=True)
    inst = c["instability"].set_index("run")
    summary = a["instability.summary"].iloc[0]
    assert inst.loc["one", "pct_changed_low"] == pytest.approx(summary.pct_changed_low, nan_ok=True)


def test_two_attention_readings_are_compared_each_on_its_own(models, tmp_path):
    ds = from_images([random_image(90 + k) for k in range(3)], [1.0, 2.0, 4.0])
    two = lambda: [Attention(), Attention(query="last").named("attention_last")]  # noqa: E731
    runs_ = {name: run(models[name], ds, two(), progress=False) for name in ("mha", "mqa-cls")}
    c = compare(runs_, n_boot=10)
    assert {"attention", "attention_differences", "attention_last", "attention_last_differences"} <= set(c.tables)
    own = runs_["mha"]["attention_last.samples"].groupby(["layer", "segment"]).mass.mean()
    mine = c["attention_last"].query("run == 'mha'").set_index(["layer", "segment"]).mass
    np.testing.assert_allclose(mine.sort_index().to_numpy(), own.sort_index().to_numpy(), atol=1e-12)
