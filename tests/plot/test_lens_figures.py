"""Lens figures read through a tuned lens carry the tuned lens's own numbers (``Trace.lens`` with ``lens=``) and say
so in their titles; two checkpoints are compared each through its own lens; the KL figure draws the lens's table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import PROMPT, random_image

import vlm_lens as vl
from vlm_lens import plot
from vlm_lens.biqa.vocabulary import LEVELS
from vlm_lens.plot.style import token_label


def randomised(model, seed=0):
    lens = vl.TunedLens(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lens.weight.copy_(torch.randn(lens.weight.shape, generator=g) * 0.3)
        lens.bias.copy_(torch.randn(lens.bias.shape, generator=g))
    return lens


@pytest.fixture(scope="module")
def traced(models):
    m = models["mha"]
    return vl.trace(m, random_image(2), PROMPT, generate=4), randomised(m)


def axes(fig, label):
    found = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(found) == 1, [ax.get_label() for ax in fig.axes]
    return found[0]


def mesh_values(ax) -> np.ndarray:
    mesh = [c for c in ax.collections if hasattr(c, "get_array") and c.get_array() is not None][0]
    return np.asarray(mesh.get_array()).ravel()


def test_latent_output_through_the_tuned_lens(traced):
    t, lens = traced
    shown = list(range(t.prompt_length - 2, len(t.tokens)))
    ax = axes(plot.latent_output(t, positions="response", context=2, lens=lens), "latent_output")
    top = t.lens(topk=1, positions=shown, lens=lens)
    expected = top.pivot(index="layer", columns="pos", values="prob").to_numpy()
    np.testing.assert_allclose(mesh_values(ax).reshape(expected.shape), expected, rtol=1e-6)
    assert not np.allclose(expected, t.lens(topk=1, positions=shown).pivot(index="layer", columns="pos",
                                                                            values="prob").to_numpy())
    assert ax.get_title().startswith("tuned lens: top-1 token per layer")
    assert axes(plot.latent_output(t), "latent_output").get_title().startswith("logit lens:")


def test_topk_target_words_and_patches_through_the_tuned_lens(traced):
    t, lens = traced
    position = t.prompt_length - 1
    ax = axes(plot.topk(t, position, k=3, lens=lens), "topk")
    table = t.lens(topk=3, positions=[position], lens=lens)
    assert [x.get_text() for x in ax.texts] == [f"{token_label(w, 10)} {p:.2f}" for w, p in zip(table.token,
                                                                                                 table.prob)]
    assert ax.get_title().startswith("tuned lens top-3")
    lines = axes(plot.target_words(t, ["good", "poor"], position, lens=lens), "target_words")
    targets = t.lens_targets(["good", "poor"], positions=[position], lens=lens)
    for line, word in zip(lines.get_lines(), ["good", "poor"]):
        np.testing.assert_allclose(line.get_ydata(), targets[targets.target == word].prob, rtol=1e-6)
    patches = plot.patch_overlay(t, value="lens", target="good", layer=1, lens=lens)
    span = t.spans["image"]
    values = t.lens_targets(["good"], positions=list(range(span.start, span.stop)), layers=[1], lens=lens).prob
    shown = np.concatenate([np.asarray(im.get_array()).ravel() for ax in patches.axes for im in ax.images
                            if im.get_array().ndim == 2])
    np.testing.assert_allclose(np.sort(shown), np.sort(values.to_numpy()), rtol=1e-6)
    assert patches._suptitle.get_text().startswith("tuned lens p('good')")


def test_two_checkpoints_each_through_its_own_lens(models, traced):
    t, lens = traced
    other = models["gqa"]
    t_other, lens_other = vl.trace(other, random_image(2), PROMPT, generate=4), randomised(other, seed=1)
    fig = plot.compare(t, t_other, "target_words", names=("a", "b"), lens=(lens, lens_other))
    position = t_other.prompt_length - 1
    expected = t_other.lens_targets(list(LEVELS), positions=[position], lens=lens_other)
    line = axes(fig, "target_words:b").get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), expected[expected.target == "excellent"].prob, rtol=1e-6)
    with pytest.raises(vl.VlmLensError, match="lens: this tuned lens decodes through another model's weights"):
        plot.compare(t, t_other, "latent_output", lens=lens)  # one lens cannot read two checkpoints
    latent = plot.compare(t, t_other, "latent_output", lens=(lens, lens_other), positions="response")
    assert latent._suptitle.get_text() == "tuned lens: top-1 token per layer"


def test_the_kl_figure_draws_the_lens_table(tmp_path):
    table = pd.DataFrame({"layer": [0, 1, 2, 3], "logit": [2.0, 1.0, 0.5, 0.0], "tuned": [0.4, 0.1, 0.05, 0.0]})
    fig = plot.lens_kl({"one": table, "two": table.assign(tuned=table.tuned * 2)}, path=tmp_path / "kl.png")
    ax = axes(fig, "lens_kl:two")
    logit, tuned = ax.get_lines()
    assert (logit.get_label(), tuned.get_label()) == ("logit lens", "tuned lens")
    assert list(logit.get_xdata()) == [0, 1, 2]  # the last index is 0 by construction, not drawn
    np.testing.assert_allclose(tuned.get_ydata(), [0.8, 0.2, 0.1])
    assert ax.get_yscale() == "log" and "0.31x" in ax.get_title()
    assert (tmp_path / "kl.png").stat().st_size > 5_000
    single = axes(plot.lens_kl(table), "lens_kl")
    assert single.get_title() == "mean KL: logit 1.167, tuned 0.183 (0.16x)"
    with pytest.raises(vl.VlmLensError, match="the KL table lacks columns"):
        plot.lens_kl(table.drop(columns="tuned"))
    with pytest.raises(vl.VlmLensError, match="fitted without held-out samples"):
        plot.lens_kl(table.iloc[:0])
