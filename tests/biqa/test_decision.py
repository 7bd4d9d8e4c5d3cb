"""The decision position and what is read there: a level is never read where it is not decided; the layer where the
level becomes the lens's top-1 equals a loop over ``lens_targets`` and the zoo's own reader; the per-layer shares
carry Wilson intervals, the level counts keep the vocabulary's order; old run folders read as new ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from conftest import ZOO_ASK, random_image
from forced_answers import forced_trace

import vlm_lens as vl
from vlm_lens import zoo
from vlm_lens.biqa.answer import describe_position, locate
from vlm_lens.biqa.attention import Attention, attention_mass
from vlm_lens.biqa.quality import Quality, first_top1, quality
from vlm_lens.biqa.vocabulary import ANSWER_PREFIX, LEVELS, QALIGN_PROMPT
from vlm_lens.core.errors import VlmLensError
from vlm_lens.runs.datasets import from_images
from vlm_lens.runs.engine import RunResult, run
from vlm_lens.runs.stats import holm, mean_interval, wilson
from vlm_lens.zoo.measure import read


def test_a_level_is_never_read_where_it_is_not_decided(models):
    m = models["mha"]
    plain = vl.trace(m, random_image(1), QALIGN_PROMPT)  # neither prefilled nor generated
    layout = locate(plain)
    assert layout.decision_pos is None and "does not end with" in layout.reason
    row = quality(plain).iloc[0]
    assert np.isnan(row.score) and row.level is None and "prefill" in row.no_level_reason
    with pytest.raises(VlmLensError, match="does not end with"):
        attention_mass(plain, query="decision")
    prefilled = vl.trace(m, random_image(1), QALIGN_PROMPT, prefill=ANSWER_PREFIX)
    assert locate(prefilled).decision_pos == prefilled.prompt_length - 1 and locate(prefilled).reason is None
    assert quality(prefilled).no_level_reason.iloc[0] is None
    # the caller who says there is no prefix vouches for the last prompt position
    assert locate(plain, answer_prefix=None).decision_pos == plain.prompt_length - 1
    none = forced_trace(m, random_image(2), "cat dog")
    assert "no level word" in locate(none).reason
    for analysis in (Quality, Attention):
        with pytest.raises(VlmLensError, match="neither prefilled nor generated"):
            analysis(prefill=False, generate=0)
    assert Attention(query="last", prefill=False).query == "last"  # a fixed row needs no level


def test_positions_in_words(models):
    t = forced_trace(models["mha"], random_image(3), "noisy . the quality of the image is poor .")
    layout = locate(t)
    assert describe_position(t, layout.decision_pos, layout) == f"decision position {layout.decision_pos} " \
                                                                "(before 'poor')"
    assert describe_position(t, t.prompt_length - 1, layout).startswith(f"last prompt position {t.prompt_length - 1}")


def test_first_top1_by_hand():
    assert first_top1([0, 1, 2, 3], [False, True, False, True]) == (1.0, 3.0)
    assert first_top1([0, 1, 2], [True, True, True]) == (0.0, 0.0)
    first, stays = first_top1([0, 1, 2], [False, True, False])
    assert first == 1.0 and np.isnan(stays)
    assert all(np.isnan(first_top1([0, 1], [False, False])))


@pytest.fixture(scope="module")
def zoo_run(zoo_runs):
    images, _ = zoo.synthetic(6, seed=1)
    return vl.load("zoo:tiny-biqa-one-stage"), images, zoo_runs["one-stage"], ZOO_ASK


def test_first_top1_equals_the_lens_targets_loop_and_the_zoo_reader(zoo_run):
    m, images, result, ask = zoo_run
    samples = result["quality.samples"]
    assert samples["first_top1"].notna().all()  # greedy answers: the last layer's top-1 is the level word
    for image, row in zip(images, samples.itertuples()):
        t = vl.trace(m, image, ask["prompt"], generate=ask["generate"])
        ranks = t.lens_targets([row.level], positions=[int(row.decision_pos)]).sort_values("layer")
        on_top = (ranks["rank"] == 1).to_numpy()
        assert row.first_top1 == ranks["layer"].to_numpy()[on_top.argmax()]
        reading = read(t)
        assert (row.first_top1, row.stays_top1) == (reading.lens_first_top1, reading.lens_stays_top1)
    table = result["quality.first_top1"]
    counts = samples["first_top1"].value_counts()
    assert table["n"].sum() == len(samples) and table["share"].sum() == pytest.approx(1.0)
    for r in table.dropna(subset=["layer"]).itertuples():
        assert r.n == counts.get(float(r.layer), 0)


def test_layer_shares_have_wilson_intervals_and_levels_keep_their_order(zoo_run):
    _, _, result, _ = zoo_run
    per_layer = result["quality.layer_samples"]
    layers = result["quality.layers"].set_index("layer")
    for layer, group in per_layer.groupby("layer"):
        for share in ("agree", "level_agree", "level_top1"):
            hits, n = int(group[share].astype(bool).sum()), len(group)
            ci = scipy.stats.binomtest(hits, n).proportion_ci(method="wilson")
            assert layers.loc[layer, share] == pytest.approx(hits / n)
            assert (layers.loc[layer, f"{share}_low"], layers.loc[layer, f"{share}_high"]) == pytest.approx(
                (ci.low, ci.high), abs=1e-9)
    levels = result["quality.levels"]
    assert levels["level"].tolist() == list(LEVELS)
    assert levels["n"].tolist() == [int((result["quality.samples"].level == w).sum()) for w in LEVELS]


def test_holm_wilson_and_t_interval_against_references():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.2, 12)
    p[[3, 7]] = np.nan
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite])]
    naive, running = np.full(12, np.nan), 0.0
    for i, k in enumerate(order):  # Holm (1979), step by step
        running = max(running, min(1.0, (len(order) - i) * p[k]))
        naive[k] = running
    np.testing.assert_allclose(holm(p), naive, rtol=1e-12)
    for hits, n in ((0, 7), (3, 10), (10, 10)):
        ci = scipy.stats.binomtest(hits, n).proportion_ci(method="wilson")
        assert wilson(hits, n) == pytest.approx((ci.low, ci.high), abs=1e-12)
    x = rng.normal(size=9)
    mean, low, high = mean_interval(x)
    reference = scipy.stats.t.interval(0.95, 8, loc=x.mean(), scale=scipy.stats.sem(x))
    assert (low, high) == pytest.approx(reference, abs=1e-12) and mean == pytest.approx(x.mean())


def test_a_folder_written_the_old_way_still_reads(models, tmp_path):
    ds = from_images([random_image(40 + k) for k in range(3)], [1.0, 3.0, 5.0])
    new = run(models["mha"], ds, [Quality(n_boot=10), Attention()], out=tmp_path / "run", progress=False)
    results = tmp_path / "run" / "results"
    samples = pd.read_parquet(results / "quality.samples.parquet")  # as the previous version wrote them
    samples.rename(columns={"decision_pos": "predict_pos"}).drop(
        columns=["first_top1", "stays_top1", "no_level_reason"]).to_parquet(results / "quality.samples.parquet")
    layer_samples = pd.read_parquet(results / "quality.layer_samples.parquet")
    layer_samples.drop(columns="level_top1").to_parquet(results / "quality.layer_samples.parquet")
    summary = pd.read_parquet(results / "attention.summary.parquet")
    summary.assign(query="predict").to_parquet(results / "attention.summary.parquet")
    old = RunResult.load(tmp_path / "run")
    assert old["quality.samples"]["decision_pos"].tolist() == new["quality.samples"]["decision_pos"].tolist()
    assert old["attention.summary"]["query"].tolist() == ["decision"]
    c = vl.compare({"old": tmp_path / "run", "new": new}, n_boot=10)
    assert "level_top1" not in c["layers"].columns and "first_top1_differences" not in c.tables
    assert c["attention_differences"]["diff"].abs().max() == 0
