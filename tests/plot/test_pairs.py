"""Comparison figures: both panels on one scale, a difference panel equal to second minus first, a trace compared
with itself gives exactly zero difference, and panels that do not line up get no difference (or a clear error)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import PROMPT, SHAPES, random_image

import vlm_lens as vl
from vlm_lens import plot
from vlm_lens.testing import tiny_llava


@pytest.fixture(scope="module")
def pair(models, tmp_path_factory):
    """One sample through two checkpoints of the same shape (different weights), and through a deeper one."""
    other = vl.load(tiny_llava(tmp_path_factory.mktemp("other"), **{**SHAPES["mha"], "seed": 11}))
    image = random_image(3)
    a = vl.trace(models["mha"], image, PROMPT, generate=3)
    b = vl.trace(other, image, PROMPT, generate=3)
    deeper = vl.trace(models["gqa"], image, PROMPT, generate=3)
    return a, b, deeper


def panel(fig, label):
    found = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(found) == 1, [ax.get_label() for ax in fig.axes]
    return found[0]


def mappable(ax):
    artists = [c for c in ax.collections if c.get_array() is not None] + list(ax.get_images())
    return artists[-1]


def limits(ax):
    norm = mappable(ax).norm
    return norm.vmin, norm.vmax


@pytest.mark.parametrize("figure, options", [
    ("latent_output", {"positions": "instruction"}),
    ("attention", {}),
    ("patch_overlay", {}),
])
def test_heatmap_panels_share_one_scale_and_difference_is_b_minus_a(pair, figure, options):
    a, b, _ = pair
    fig = plot.compare(a, b, figure, names=("one", "two"), **options)
    suffix = ":base" if figure == "patch_overlay" else ""
    left, right = panel(fig, f"{figure}:one{suffix}"), panel(fig, f"{figure}:two{suffix}")
    assert limits(left) == limits(right)
    values_a, values_b = (np.asarray(mappable(ax).get_array()).ravel() for ax in (left, right))
    assert max(values_a.max(), values_b.max()) == pytest.approx(limits(left)[1])
    diff = panel(fig, f"{figure}:difference{suffix}")
    np.testing.assert_allclose(np.asarray(mappable(diff).get_array()).ravel(), values_b - values_a, atol=1e-7)
    lo, hi = limits(diff)
    assert lo == pytest.approx(-hi)  # a diverging scale centred on zero


@pytest.mark.parametrize("figure", ["latent_output", "attention", "patch_overlay", "target_words", "attention_mass"])
def test_a_trace_compared_with_itself_differs_by_zero(pair, figure):
    a, _, _ = pair
    fig = plot.compare(a, a, figure, difference=True)
    suffix = ":base" if figure == "patch_overlay" else ""
    diff = panel(fig, f"{figure}:difference{suffix}")
    if figure in ("target_words", "attention_mass"):
        values = np.concatenate([line.get_ydata() for line in diff.get_lines() if line.get_label()[0] != "_"])
    else:
        values = np.asarray(mappable(diff).get_array()).ravel()
    assert values.size and np.all(values == 0)


def test_line_panels_share_their_value_axis(pair):
    a, b, _ = pair
    fig = plot.compare(a, b, "target_words", words=["good", "poor"])
    left, right = panel(fig, "target_words:A"), panel(fig, "target_words:B")
    assert left.get_ylim() == right.get_ylim()
    for axis in (left, right):
        assert [line.get_label() for line in axis.get_lines()] == ["good", "poor"]
    mass = plot.compare(a, b, "attention_mass")
    assert panel(mass, "attention_mass:A").get_ylim() == panel(mass, "attention_mass:B").get_ylim() == (0, 1)


def test_topk_side_by_side_on_one_probability_scale(pair):
    a, b, _ = pair
    fig = plot.compare(a, b, "topk", k=2)
    left, right = panel(fig, "topk:A"), panel(fig, "topk:B")
    assert left.get_xlabel() == right.get_xlabel() and "full slot" in left.get_xlabel()
    widest = max(bar.get_width() for axis in (left, right) for bar in axis.patches)
    assert widest == pytest.approx(0.92)  # the largest probability of both fills its slot, nothing more
    with pytest.raises(vl.VlmLensError, match="no difference panel"):
        plot.compare(a, b, "topk", difference=True)


def test_panels_that_do_not_line_up(pair):
    a, _, deeper = pair
    fig = plot.compare(a, deeper, "attention")
    assert [ax.get_label() for ax in fig.axes if ax.get_label().startswith("attention:")] == ["attention:A",
                                                                                              "attention:B"]
    with pytest.raises(vl.VlmLensError, match="do not line up"):
        plot.compare(a, deeper, "target_words", difference=True)
    with pytest.raises(vl.VlmLensError, match="figure='heatmap'"):
        plot.compare(a, deeper, "heatmap")


def test_a_pair_of_positions_reads_each_trace_at_its_own(pair):
    a, b, _ = pair
    pa, pb = a.prompt_length, b.prompt_length + 1  # two different response positions
    fig = plot.compare(a, b, "target_words", words=["good", "poor"], position=(pa, pb), difference=True)
    for ax, t, p in [(panel(fig, "target_words:A"), a, pa), (panel(fig, "target_words:B"), b, pb)]:
        expected = t.lens_targets(["good", "poor"], positions=[p]).query("target == 'good'").sort_values("layer")
        np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), expected["prob"].to_numpy(), rtol=1e-6)
    mass = plot.compare(a, b, "attention_mass", query=(pa, pb))
    for ax, t, p in [(panel(mass, "attention_mass:A"), a, pa), (panel(mass, "attention_mass:B"), b, pb)]:
        row = t.query_positions.tolist().index(p)
        image = t.tokens["segment"].to_numpy()[: t.attention.shape[-1]] == "image"
        last = t.attention[-1, :, row, :].mean(0).numpy()[image].sum()  # the last layer's image mass, naively
        bands = [c for c in ax.collections]
        heights = {c.get_label(): c.get_paths()[0].vertices for c in bands}
        assert "image" in heights and last == pytest.approx(_band_height_at_last_layer(heights["image"]), abs=1e-5)


def _band_height_at_last_layer(vertices):
    """Height of a stackplot band at its rightmost x (top minus bottom edge)."""
    x = vertices[:, 0]
    at = vertices[np.isclose(x, x.max())][:, 1]
    return float(at.max() - at.min())
