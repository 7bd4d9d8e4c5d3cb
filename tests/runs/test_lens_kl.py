"""The lens-KL analysis: per hidden index, the KL of the logit lens and of a tuned lens to the model's output over every
position, equal to a naive loop over positions; streamed through ``vl.run``; the lens recorded in the run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_image

import vlm_lens as vl
from vlm_lens.runs.datasets import from_images
from vlm_lens.runs.lens_kl import LensKL, kl_sums


def randomised(model, seed=0):
    lens = vl.TunedLens(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lens.weight.copy_(torch.randn(lens.weight.shape, generator=g) * 0.1)
        lens.bias.copy_(torch.randn(lens.bias.shape, generator=g) * 0.5)
    return lens


def naive(model, lens, t):
    """Per hidden index, KL summed over positions: logit lens and ``lens``, one position at a time, by hand."""
    n = model.adapter.n_layers
    out = np.zeros((2, n + 1))
    head, norm = model.model.lm_head, model.adapter.final_norm
    with torch.no_grad():
        for p in range(len(t.tokens)):
            final = torch.log_softmax(head(norm(t.hidden[n, p])), -1)
            for l in range(n + 1):
                h = t.hidden[l, p]
                tuned = h + lens.weight[l] @ h + lens.bias[l] if l < n else h
                for k, x in enumerate((h, tuned)):
                    q = torch.log_softmax(head(norm(x)), -1)
                    out[k, l] += float((final.exp() * (final - q)).sum())
    return out


def test_kl_sums_equal_a_naive_loop(models, image):
    m = models["gqa"]
    lens = randomised(m)
    t = vl.trace(m, image, "How would you rate the quality of this image?", generate=3)
    sums = kl_sums([t], lens)
    reference = naive(m, lens, t)
    np.testing.assert_allclose(sums["logit"].numpy(), reference[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sums["lens"].numpy(), reference[1], rtol=1e-4, atol=1e-5)
    assert float(sums["positions"]) == len(t.tokens)
    assert sums["logit"][-1] == pytest.approx(0.0, abs=1e-6)  # the last index is the output itself


def test_the_analysis_in_a_run(models):
    m = models["mha"]
    lens = randomised(m, seed=3)
    pictures = [random_image(k) for k in range(3)]
    result = vl.run(m, from_images(pictures), [LensKL(lens, generate=2)], batch_size=2, progress=False)
    layers, samples = result["lens_kl.layers"], result["lens_kl.samples"]
    traces = [vl.trace(m, p, "How would you rate the quality of this image?", generate=2) for p in pictures]
    reference = sum(naive(m, lens, t) for t in traces)
    positions = sum(len(t.tokens) for t in traces)
    np.testing.assert_allclose(layers["logit"], reference[0] / positions, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(layers["lens"], reference[1] / positions, rtol=1e-4, atol=1e-6)
    assert (layers["n_positions"] == positions).all() and (layers["n_samples"] == 3).all()
    assert len(samples) == 3 * (m.adapter.n_layers + 1)
    recorded = result.meta["analyses"][0]["config"]["lens"]
    assert recorded["kind"] == "tuned" and recorded["sha256"] == lens.describe()["sha256"]


def test_without_a_lens_both_columns_are_the_logit_lens(models, image):
    t = vl.trace(models["mha"], image, "Rate it.", generate=1)
    sums = kl_sums([t])
    assert torch.equal(sums["logit"], sums["lens"])


def test_bad_input(models, image):
    with pytest.raises(vl.VlmLensError, match="lens='tuned': expected None or a lens"):
        LensKL("tuned")
    t = vl.trace(models["mha"], image, "Rate it.", keep=vl.Keep(layers=[0, 2]))
    with pytest.raises(vl.VlmLensError, match=r"kl_sums needs every hidden index 0..2 kept; a trace kept \[0, 2\]"):
        kl_sums([t])
    with pytest.raises(vl.VlmLensError, match="lens: this tuned lens decodes through another model's weights"):
        kl_sums([vl.trace(models["mha"], image, "Rate it.")], randomised(models["next"]))
