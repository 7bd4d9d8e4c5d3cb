"""Grounding: the parser reads cues, negations and intensifiers as documented; the ordinal model recovers a level
that is a function of the features (and does no better than the baseline when it is not); contradictions follow
the rule; the reducer reads the response up to the level word."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import random_image
from forced_answers import forced_trace

from vlm_lens.biqa.grounding import (
    Feature,
    Grounding,
    Vocabulary,
    contradiction,
    explain_levels,
    parse_features,
)
from vlm_lens.biqa.vocabulary import LEVELS
from vlm_lens.core.errors import VlmLensError
from vlm_lens.runs.datasets import Sample


def test_parser_reads_cues_negations_and_intensifiers():
    f = parse_features("Very noisy and slightly blurry, but no compression artifacts; colours are vivid.")
    assert (f["noise"], f["blur"], f["compression"], f["vivid"], f["dark"]) == (2.0, 0.5, 0.0, 1.0, 0.0)
    assert f["polarity"] == pytest.approx(-2.0 - 0.5 + 1.0)
    assert parse_features("out of focus")["blur"] == 1.0 and parse_features("focus")["blur"] == 0.0
    assert parse_features("not sharp at all")["sharp"] == 0.0
    custom = Vocabulary(features={"haze": Feature(("hazy", "fog"), -1)}, intensifiers={"thick": 3.0},
                        negations=("no",))
    assert parse_features("thick fog, very hazy", custom) == {"haze": 3.0, "polarity": -3.0}
    with pytest.raises(VlmLensError, match="polarity of \\+1 or -1"):
        Vocabulary(features={"x": Feature(("x",), 0)})


def test_contradictions_follow_the_rule():
    assert contradiction(+1.0, "poor", LEVELS) and contradiction(-2.0, "excellent", LEVELS)
    assert not contradiction(+1.0, "good", LEVELS) and not contradiction(-1.0, "bad", LEVELS)
    assert not contradiction(-1.0, "fair", LEVELS)  # the middle level contradicts nothing
    assert contradiction(0.0, "poor", LEVELS) is None and contradiction(1.0, None, LEVELS) is None


def _synthetic(n: int, seed: int, informative: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    noise, sharp = rng.integers(0, 3, n) / 2.0 * 2, rng.integers(0, 2, n).astype(float)
    quality = sharp * 2 - noise  # in [-2, 2]
    if not informative:
        quality = rng.permutation(quality)
    level = np.array(LEVELS)[np.clip(np.round(2 - quality), 0, 4).astype(int)]
    return pd.DataFrame({"index": range(n), "id": [str(k) for k in range(n)], "description": "", "level": level,
                         "noise": noise, "sharp": sharp, "polarity": sharp - noise})


def test_ordinal_model_explains_levels_made_from_features():
    good = explain_levels(_synthetic(80, 0, True), LEVELS, folds=5, seed=0)
    summary = good["summary"].iloc[0]
    assert summary.accuracy_cv > 0.9 and summary.accuracy_cv > summary.baseline_accuracy + 0.3
    assert summary.srcc_cv > 0.9 and summary.mae_cv < 0.2 and summary.n == 80
    beta = good["coefficients"].set_index("feature").beta
    assert beta["noise"] < 0 < beta["sharp"]
    shuffled = explain_levels(_synthetic(80, 0, False), LEVELS, folds=5, seed=0)["summary"].iloc[0]
    assert shuffled.accuracy_cv < summary.accuracy_cv - 0.3
    tiny = explain_levels(_synthetic(3, 0, True), LEVELS, folds=5)["summary"].iloc[0]
    assert np.isnan(tiny.accuracy_cv) and tiny.n == 3


def test_reducer_reads_the_response_up_to_the_level(models):
    m = models["mha"]
    answers = ["very noisy and dark . the quality of the image is bad .", "sharp and clear but poor .",
               "bright colour", "slightly blurry . the quality of the image is good ."]
    reducer = Grounding(folds=2)
    for k, text in enumerate(answers):
        reducer.update(Sample(k, f"s{k}"), [forced_trace(m, random_image(60 + k), text)])
    tables = reducer.result()
    samples = tables["samples"]
    assert samples.description.tolist() == ["very noisy and dark. the quality of the image is", "sharp and clear but",
                                            "bright colour", "slightly blurry. the quality of the image is"]
    assert samples.level.fillna("-").tolist() == ["bad", "poor", "-", "good"]
    assert samples.noise.tolist() == [2.0, 0.0, 0.0, 0.0] and samples.sharp.tolist() == [0.0, 1.0, 0.0, 0.0]
    assert samples.contradiction.tolist() == [False, True, None, True]
    summary = tables["summary"].iloc[0]
    assert (summary.n_contradictions, summary.n_with_features, summary.n_no_level) == (2, 3, 1)
    assert summary.contradiction_rate == pytest.approx(2 / 3)
    assert Grounding(folds=2).fresh().config() == reducer.config()
