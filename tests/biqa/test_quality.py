"""Quality scores equal the Q-Align formula on the model's own logits (from a plain HF forward); the lens by layer
equals norm + head applied by hand; correlations equal scipy's; a run's per-sample scores equal unbatched ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from conftest import random_image
from forced_answers import forced_trace

from vlm_lens.biqa.answer import locate
from vlm_lens.biqa.quality import Quality, lens_by_layer, quality, weighted_score
from vlm_lens.biqa.vocabulary import ANSWER_PREFIX, LEVELS, QALIGN_PROMPT
from vlm_lens.core.errors import VlmLensError
from vlm_lens.runs.datasets import from_images
from vlm_lens.runs.engine import run
from vlm_lens.runs.reducers import trace_samples
from vlm_lens.runs.stats import (
    correlations,
    fit_logistic4,
    logistic4,
    paired_correlations,
    plcc,
    plcc_logistic,
    srcc,
)


def _qalign_trace(model, image, **request):
    from vlm_lens.runs.reducers import TraceRequest

    return trace_samples(model, [image], ["x"], TraceRequest(QALIGN_PROMPT, ANSWER_PREFIX, hidden=True, **request),
                         batch_size=1)[0][0]


def _hf_logits(model, image, text):
    inputs = model.processor(images=image, text=text, return_tensors="pt")
    with torch.no_grad():
        return model.model(**inputs).logits[0].double()


def _ids(model, words):
    return [model.adapter.tokenizer.convert_tokens_to_ids(w) for w in words]  # word-level tiny vocabulary


def test_weighted_score_is_qalign():
    z = torch.tensor([[1.0, 2.0, 0.5, -1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 9.0]])
    p = np.exp(z.double().numpy()) / np.exp(z.double().numpy()).sum(-1, keepdims=True)
    np.testing.assert_allclose(weighted_score(z).numpy(), p @ np.array([5, 4, 3, 2, 1.0]), rtol=1e-12)
    with pytest.raises(VlmLensError, match="5 level logits for 2 weights"):
        weighted_score(z, [1, 2])


def test_qalign_score_from_hf_logits(models):
    m = models["gqa"]
    image = random_image(5)
    t = _qalign_trace(m, image)
    assert " ".join(t.tokens.text.iloc[-6:]) == "the quality of the image is"
    assert t.tokens.segment.iloc[-6:].eq("system").all()  # the prefill is template, not the user's words
    row = quality(t).iloc[0]
    assert row.decision_pos == t.prompt_length - 1 and pd.isna(row.level_pos) and row.generated is None
    text = m.adapter.format_prompt(QALIGN_PROMPT, 1).text + " " + ANSWER_PREFIX
    logits = _hf_logits(m, image, text)[-1]
    p = torch.softmax(logits[_ids(m, LEVELS)], -1)
    assert row.score == pytest.approx(float(p @ torch.tensor([5, 4, 3, 2, 1.0], dtype=torch.float64)), abs=1e-5)
    assert row.level == LEVELS[int(p.argmax())]
    assert row.good_poor == pytest.approx(float(torch.softmax(logits[_ids(m, ["good", "poor"])], -1)[0]), abs=1e-5)
    np.testing.assert_allclose(row[[f"p_{w}" for w in LEVELS]].to_numpy(float), p.numpy(), atol=1e-5)
    two = quality(t, ["good", "poor"], [1.0, 0.0]).iloc[0]
    assert two.score == pytest.approx(row.good_poor, abs=1e-12)


def test_generated_level_is_read_one_position_earlier(models):
    m = models["mha"]
    image = random_image(6)
    t = forced_trace(m, image, "noisy and dark . the quality of the image is poor .")
    layout = locate(t)
    assert t.tokens.text.iloc[layout.level_pos] == "poor" and layout.decision_pos == layout.level_pos - 1
    row = quality(t).iloc[0]
    assert row.generated == "poor" and row.decision_pos == layout.decision_pos
    logits = _hf_logits(m, image, t.meta["rendered_prompt"] + " " + t.answer)[layout.decision_pos]
    p = torch.softmax(logits[_ids(m, LEVELS)], -1)
    assert row.score == pytest.approx(float(p @ torch.tensor([5, 4, 3, 2, 1.0], dtype=torch.float64)), abs=1e-5)
    none = forced_trace(m, image, "cat dog")
    empty = quality(none).iloc[0]
    assert empty.level is None and np.isnan(empty.score) and lens_by_layer(none).empty


def test_lens_by_layer_against_norm_and_head_by_hand(models):
    m = models["gqa"]
    t = _qalign_trace(m, random_image(7))
    table = lens_by_layer(t)
    pos = t.prompt_length - 1
    final = torch.log_softmax(t.logits[-1].double(), -1)
    assert table.layer.tolist() == list(range(m.adapter.n_layers + 1))
    for layer, row in table.set_index("layer").iterrows():
        h = t.hidden[t.layers.index(layer), t.positions.tolist().index(pos)]
        with torch.no_grad():
            log_p = torch.log_softmax(m.model.lm_head(m.model.model.language_model.norm(h)).double(), -1)
        assert row.kl == pytest.approx(float((final.exp() * (final - log_p)).sum()), abs=1e-5)
        assert row.agree == (int(log_p.argmax()) == int(final.argmax()))
        assert row.level_mass == pytest.approx(float(log_p[_ids(m, LEVELS)].exp().sum()), abs=1e-5)
    last = table.iloc[-1]
    assert last.agree and last.level_agree and last.kl < 1e-6


def test_run_scores_equal_unbatched_and_correlations_equal_stats(models):
    m = models["next"]  # LLaVA-NeXT: image token counts differ by image size, so the batch is really padded
    images = [random_image(20 + k, (32 + 9 * k, 60 - 7 * k)) for k in range(5)]
    ds = from_images(images, [4.0, 1.0, 3.5, 2.0, 5.0])
    result = run(m, ds, [Quality(n_boot=40)], batch_size=3, progress=False)
    samples = result["quality.samples"]
    for image, (_, row) in zip(images, samples.iterrows()):
        alone = quality(_qalign_trace(m, image)).iloc[0]
        assert row.score == pytest.approx(alone.score, abs=1e-5) and row.level == alone.level
    assert samples["id"].tolist() == ["0", "1", "2", "3", "4"] and samples.mos.tolist() == [4.0, 1.0, 3.5, 2.0, 5.0]
    expected = correlations(samples.score.to_numpy(), samples.mos.to_numpy(), n_boot=40)
    got = result["quality.correlations"].query("score == 'qalign'").reset_index(drop=True)
    pd.testing.assert_frame_equal(got[expected.columns], expected)
    layers = result["quality.layer_samples"].astype({"agree": float}).groupby("layer").agree.mean()
    np.testing.assert_allclose(result["quality.layers"].agree.to_numpy(), layers.to_numpy())
    assert result["quality.layers"].n.tolist() == [5] * (m.adapter.n_layers + 1)


def test_correlations_equal_scipy_and_respect_dmos():
    rng = np.random.default_rng(0)
    x = np.round(rng.normal(size=60), 1)  # ties
    y = np.tanh(x) + 0.3 * rng.normal(size=60)
    assert srcc(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert plcc(x, y) == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-12)
    mos = correlations(x, y, n_boot=50, seed=3)
    dmos = correlations(x, -y, n_boot=50, seed=3, higher_is_better=False)
    pd.testing.assert_frame_equal(mos, dmos)
    flipped = correlations(x, -y, n_boot=50, seed=3).set_index("metric")
    assert flipped.loc["srcc", "value"] == pytest.approx(-mos.set_index("metric").loc["srcc", "value"])
    assert mos.low.lt(mos.value).all() and mos.high.gt(mos.value).all()
    pd.testing.assert_frame_equal(mos, correlations(x, y, n_boot=50, seed=3))  # seeded
    assert not mos.equals(correlations(x, y, n_boot=50, seed=4))


def test_logistic_fit_recovers_a_vqeg_curve_and_nans_are_counted():
    x = np.linspace(-3, 3, 40)
    y = logistic4(x, 4.5, 1.2, 0.3, 0.7)
    params = fit_logistic4(x, y)
    np.testing.assert_allclose(params[:3], [4.5, 1.2, 0.3], atol=1e-4)
    assert abs(params[3]) == pytest.approx(0.7, abs=1e-4)
    assert plcc_logistic(x, y) == pytest.approx(1.0, abs=1e-9) and plcc(x, y) < 0.99
    pred = x.copy()
    pred[[3, 7]] = np.nan
    table = correlations(pred, y, n_boot=0)
    assert table.n.tolist() == [38] * 3 and table.n_missing.tolist() == [2] * 3 and table.low.isna().all()
    assert np.isnan(srcc(np.ones(5), np.arange(5.0)))
    same = paired_correlations(x, x, y, n_boot=30)
    assert same["diff"].abs().max() == 0 and same.p.eq(1.0).all()


def test_prefill_is_not_doubled_when_the_prompt_format_ends_with_it(tmp_path):
    import vlm_lens as vl
    from vlm_lens.testing.mplug_owl2 import tiny_mplug_owl2

    m = vl.load(tiny_mplug_owl2(tmp_path / "owl"))  # the paper's family; its "q-align" format ends with the prefix
    m.adapter.prompt_format = "q-align"
    t = _qalign_trace(m, random_image(3))
    text = t.meta["rendered_prompt"]  # what was traced
    assert text.lower().count("the quality of the image is") == 1 and text.endswith("The quality of the image is")
    assert quality(t).decision_pos.iloc[0] == t.prompt_length - 1
