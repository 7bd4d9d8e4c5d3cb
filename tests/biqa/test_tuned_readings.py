"""The BIQA readings through a tuned lens: ``lens_by_layer`` equals the translators applied by hand, a run's Quality
and Instability read their layers through the lens and record it, and ``compare`` compares per-layer readings only
between runs read through the same kind of lens."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import random_image

import vlm_lens as vl
from vlm_lens.biqa.comparison import compare
from vlm_lens.biqa.instability import Instability, candidate_set
from vlm_lens.biqa.quality import Quality, lens_by_layer
from vlm_lens.biqa.vocabulary import ANSWER_PREFIX, LEVELS, QALIGN_PROMPT
from vlm_lens.runs.datasets import from_images
from vlm_lens.runs.reducers import TraceRequest, trace_samples


def randomised(model, seed=0):
    lens = vl.TunedLens(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lens.weight.copy_(torch.randn(lens.weight.shape, generator=g) * 0.2)
        lens.bias.copy_(torch.randn(lens.bias.shape, generator=g))
    return lens


def qalign_trace(model, image):
    request = TraceRequest(QALIGN_PROMPT, ANSWER_PREFIX, hidden=True)
    return trace_samples(model, [image], ["x"], request, batch_size=1)[0][0]


def test_lens_by_layer_through_a_tuned_lens_against_the_translators_by_hand(models):
    m = models["gqa"]
    lens = randomised(m)
    t = qalign_trace(m, random_image(7))
    table = lens_by_layer(t, lens=lens)
    pos = t.prompt_length - 1
    final = torch.log_softmax(t.logits[-1].double(), -1)
    level_ids = m.adapter.tokenizer.convert_tokens_to_ids(list(LEVELS))
    n = m.adapter.n_layers
    for layer, row in table.set_index("layer").iterrows():
        h = t.hidden[t.layers.index(layer), t.positions.tolist().index(pos)]
        if layer < n:
            h = h + lens.weight[layer].detach() @ h + lens.bias[layer].detach()
        with torch.no_grad():
            log_p = torch.log_softmax(m.model.lm_head(m.adapter.final_norm(h)).double(), -1)
        assert row.kl == pytest.approx(float((final.exp() * (final - log_p)).sum()), abs=1e-5)
        assert row.agree == (int(log_p.argmax()) == int(final.argmax()))
        assert row.level_mass == pytest.approx(float(log_p[level_ids].exp().sum()), abs=1e-5)
    logit = lens_by_layer(t)
    assert not np.allclose(table.kl[:-1], logit.kl[:-1])  # the translators change the reading
    identity = lens_by_layer(t, lens=vl.TunedLens(m))
    pd.testing.assert_frame_equal(identity, logit, check_exact=False, atol=1e-6, rtol=0)


def test_a_run_reads_its_layers_through_the_lens_and_records_it(models):
    m = models["mha"]
    lens = randomised(m, seed=4)
    images = [random_image(30 + k) for k in range(3)]
    result = vl.run(m, from_images(images, [1.0, 3.0, 5.0]), [Quality(n_boot=10, lens=lens)], batch_size=2,
                    progress=False)
    layer_samples = result["quality.layer_samples"]
    for k, image in enumerate(images):
        alone = lens_by_layer(qalign_trace(m, image), lens=lens)
        got = layer_samples[layer_samples["index"] == k].reset_index(drop=True)
        np.testing.assert_allclose(got.kl, alone.kl, atol=1e-5)
        assert got.top1.tolist() == alone.top1.tolist()
    config = result.meta["analyses"][0]["config"]["lens"]
    assert config == lens.describe() and config["kind"] == "tuned"
    assert Quality().config()["lens"] is True  # runs of the logit lens keep their fingerprint


def test_instability_through_the_identity_lens_equals_the_logit_lens(models):
    m = models["mha"]
    request = Instability(k=3, temperature=1.5).request()
    traces = trace_samples(m, [random_image(3)], ["x"], request, batch_size=3)[0]
    a = candidate_set(traces, lens=vl.TunedLens(m))
    b = candidate_set(traces)
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-6, rtol=0)
    assert "lens" not in Instability().config()
    assert Instability(lens=vl.TunedLens(m)).config()["lens"]["kind"] == "tuned"
    with pytest.raises(vl.VlmLensError, match="lens='x': expected None"):
        Instability(lens="x")
    with pytest.raises(vl.VlmLensError, match="lens='x': expected True"):
        Quality(lens="x")


@pytest.fixture(scope="module")
def lens_runs(models, tmp_path_factory):
    ds = from_images([random_image(80 + k) for k in range(4)], [1.0, 4.0, 2.5, 5.0])
    root = tmp_path_factory.mktemp("lens-runs")
    return {
        "logit": vl.run(models["mha"], ds, [Quality(n_boot=10)], out=root / "logit", batch_size=4, progress=False),
        "tuned": vl.run(models["mha"], ds, [Quality(n_boot=10, lens=randomised(models["mha"]))], out=root / "tuned",
                        batch_size=4, progress=False),
        "tuned-b": vl.run(models["gqa"], ds, [Quality(n_boot=10, lens=randomised(models["gqa"]))],
                          out=root / "tuned-b", batch_size=4, progress=False),
    }


def test_compare_reads_layers_only_through_one_kind_of_lens(lens_runs):
    mixed = compare({"a": lens_runs["logit"], "b": lens_runs["tuned"]}, n_boot=10)
    assert "layers" not in mixed.tables and "samples" in mixed.tables
    assert any("different lenses" in note for note in mixed.notes)
    with pytest.raises(vl.VlmLensError, match=r"lens='tuned': the per-layer readings of \{'a': 'logit'\}"):
        compare({"a": lens_runs["logit"], "b": lens_runs["tuned"]}, n_boot=10, lens="tuned")
    tuned = compare({"a": lens_runs["tuned"], "b": lens_runs["tuned-b"]}, n_boot=10, lens="tuned")
    assert {"layers", "layer_differences"} <= set(tuned.tables)
    assert any("each run's own tuned lens" in note for note in tuned.notes)
    means = lens_runs["tuned-b"]["quality.layers"].set_index("layer")["kl"]
    got = tuned["layers"].query("run == 'b'").set_index("layer")["kl"]
    np.testing.assert_allclose(got, means.loc[got.index], atol=1e-12)  # the layers both runs have
    with pytest.raises(vl.VlmLensError, match="lens='best': expected one of 'logit', 'tuned'"):
        compare({"a": lens_runs["tuned"], "b": lens_runs["tuned-b"]}, lens="best")
