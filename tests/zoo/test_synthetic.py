"""The synthetic world: determinism, label consistency, and that each degradation does what its table says."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from vlm_lens import VlmLensError, zoo
from vlm_lens.zoo import grammar
from vlm_lens.zoo.degrade import DEGRADATIONS, degrade
from vlm_lens.zoo.scenes import luminance, scene
from vlm_lens.zoo.synthetic import IMPAIRMENT_WEIGHTS, TYPES, synthetic_arrays


@pytest.fixture(scope="module")
def sample():
    return synthetic_arrays(300, seed=5)


def test_same_seed_same_images_and_labels():
    a_images, a_labels = synthetic_arrays(12, seed=3)
    b_images, b_labels = synthetic_arrays(12, seed=3)
    np.testing.assert_array_equal(a_images, b_images)
    assert a_labels.equals(b_labels)


def test_image_depends_only_on_seed_and_index():
    full, full_labels = synthetic_arrays(10, seed=4)
    tail, tail_labels = synthetic_arrays(4, seed=4, start=6)
    np.testing.assert_array_equal(full[6:], tail)
    assert full_labels.iloc[6:].reset_index(drop=True).equals(tail_labels)
    other, _ = synthetic_arrays(10, seed=5)
    assert all(not np.array_equal(x, y) for x, y in zip(full, other))


def test_public_synthetic_returns_pil_images_and_the_same_labels():
    images, labels = zoo.synthetic(3, seed=2)
    arrays, same = synthetic_arrays(3, seed=2)
    assert [im.size for im in images] == [(64, 64)] * 3 and all(im.mode == "RGB" for im in images)
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in images]), arrays)
    assert labels.equals(same)


def test_labels_are_consistent(sample):
    _, labels = sample
    for _, row in labels.iterrows():
        severities = {t: row[t] for t in TYPES}
        assert all(0.0 <= s <= 1.0 for s in severities.values())
        assert not (row["dark"] > 0 and row["bright"] > 0)
        impairment = sum(IMPAIRMENT_WEIGHTS[t] * s for t, s in severities.items())
        assert row["mos"] == pytest.approx(1 + 4 * math.exp(-impairment))
        assert row["level"] == grammar.LEVELS_WORST_FIRST[int(np.searchsorted([1.8, 2.6, 3.4, 4.2], row["mos"], side="right"))]
        named = grammar.parse(row["description"])
        assert set(named) == {t for t, s in severities.items() if s > 0}
        assert all(named[t] == grammar.severity_word(severities[t]) for t in named)
        assert row["answer"] == f"{row['description']} The quality of the image is {row['level']}."
        assert row["n_degradations"] == len(named)


def test_every_level_and_type_occurs(sample):
    _, labels = sample
    assert set(labels["level"]) == set(grammar.LEVELS_WORST_FIRST)
    assert all((labels[t] > 0).mean() > 0.08 for t in TYPES)
    assert 0.05 < (labels["n_degradations"] == 0).mean() < 0.25


def test_mos_is_monotone_in_every_severity():
    rng = np.random.default_rng(0)
    for _ in range(50):
        base = {t: float(rng.uniform(0, 1)) if rng.random() < 0.5 else 0.0 for t in TYPES}
        for t in TYPES:
            worse = dict(base, **{t: min(1.0, base[t] + 0.1)})
            assert zoo.mos(worse) <= zoo.mos(base)
    assert zoo.mos({}) == 5.0


def test_level_bins():
    assert [grammar.level_of(m) for m in (1.0, 1.79, 1.8, 2.6, 3.39, 3.4, 4.2, 5.0)] == \
        ["bad", "bad", "poor", "fair", "fair", "good", "excellent", "excellent"]
    with pytest.raises(VlmLensError, match="mos=0.5"):
        grammar.level_of(0.5)


def test_describe_parse_round_trip_for_every_combination():
    words = {"slight": 0.2, "moderate": 0.5, "heavy": 0.9}
    slots = [("blur",), ("dark", "bright"), ("noise",), ("jpeg",), ("contrast",), ("desaturation",)]
    for present in itertools.product([False, True], repeat=len(slots)):
        for choice in itertools.product(*[s if on else (None,) for s, on in zip(slots, present)]):
            severities = {name: words[["slight", "moderate", "heavy"][i % 3]]
                          for i, name in enumerate(choice) if name}
            text = grammar.describe(severities)
            assert text.startswith("The image is ") and text.endswith(".")
            assert grammar.parse(text) == {n: grammar.severity_word(s) for n, s in severities.items()}
    assert grammar.describe({}) == "The image is clear, with no visible distortions."
    assert grammar.parse_level("... The quality of the image is fair.") == "fair"
    assert grammar.parse_level("the image is clear") is None


def test_every_grammar_word_is_in_the_vocabulary():
    from vlm_lens.zoo.model import tokenizer

    tok = tokenizer()
    text = " ".join([grammar.describe({t: 0.9 for t in TYPES if t != "bright"}), grammar.describe({"bright": 0.1}),
                     grammar.describe({}), *grammar.PROMPTS, *grammar.LEVELS_WORST_FIRST, "the quality of the image is"])
    assert tok.unk_token_id not in tok(text, add_special_tokens=False)["input_ids"]


def _high_frequency(x):
    y = luminance(x.astype(np.float32) / 255.0)
    return float(np.abs(np.diff(y, axis=0)).mean() + np.abs(np.diff(y, axis=1)).mean())


def test_each_degradation_moves_its_statistic_monotonically():
    clean = scene(np.random.default_rng(7))
    stats = {
        "blur": (_high_frequency, -1),
        "noise": (_high_frequency, +1),
        "dark": (lambda x: luminance(x / 255.0).mean(), -1),
        "bright": (lambda x: luminance(x / 255.0).mean(), +1),
        "contrast": (lambda x: luminance(x / 255.0).std(), -1),
        "desaturation": (lambda x: np.abs(x / 255.0 - luminance(x / 255.0)[..., None]).mean(), -1),
        "jpeg": (lambda x: np.abs(x.astype(float) - degrade(clean, {}, np.random.default_rng(0))).mean(), +1),
    }
    assert set(stats) == set(DEGRADATIONS)
    for name, (stat, sign) in stats.items():
        values = [stat(degrade(clean, {name: s} if s else {}, np.random.default_rng(0))) for s in (0, 0.2, 0.6, 1.0)]
        assert all(sign * (b - a) > 0 for a, b in zip(values, values[1:])), (name, values)


def test_bad_arguments_are_named():
    with pytest.raises(VlmLensError, match="n=-1"):
        synthetic_arrays(-1)
    with pytest.raises(VlmLensError, match="seed="):
        synthetic_arrays(2, seed=-3)
    with pytest.raises(VlmLensError, match="'dark' and 'bright'"):
        degrade(scene(np.random.default_rng(0)), {"dark": 0.5, "bright": 0.5}, np.random.default_rng(0))
    with pytest.raises(VlmLensError, match="unknown degradation"):
        degrade(scene(np.random.default_rng(0)), {"fog": 0.5}, np.random.default_rng(0))
    with pytest.raises(VlmLensError, match="zoo:nope"):
        zoo.checkpoint_path("nope")
