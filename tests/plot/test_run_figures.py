"""Figures of a dataset run, read back from the Figure objects: the stacked area sums to 1 at every layer and its
bands equal a naive mean over per-sample traces, heatmaps carry the head mean of the run's tables, the patch grid is
the image profile laid out row by row, two runs share one scale and their difference panel is b - a (zero for a run
with itself), and bad input gets an error that says what to do."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHAPES, random_image
from PIL import Image

import vlm_lens as vl
from vlm_lens import plot
from vlm_lens.biqa.attention import Attention
from vlm_lens.biqa.vocabulary import ANSWER_PREFIX, QALIGN_PROMPT
from vlm_lens.runs.datasets import from_images
from vlm_lens.runs.engine import RunResult
from vlm_lens.testing import tiny_llava

IMAGES = [random_image(40 + k) for k in range(5)]


@pytest.fixture(scope="module")
def run_a(models, tmp_path_factory):
    """A spatial LLaVA-1.5 (3 layers, grouped-query attention), batched, written to a folder."""
    out = tmp_path_factory.mktemp("runs") / "one-stage"
    return vl.run(models["gqa"], from_images(IMAGES), [Attention()], out=out, batch_size=3, progress=False)


@pytest.fixture(scope="module")
def run_b(tmp_path_factory):
    """The same shape with other weights, on the same images."""
    other = vl.load(tiny_llava(tmp_path_factory.mktemp("other"), **{**SHAPES["gqa"], "seed": 11}))
    return vl.run(other, from_images(IMAGES), [Attention()], batch_size=5, progress=False)


@pytest.fixture(scope="module")
def shallow(models):
    """A 2-layer model's run: its panels do not line up with the 3-layer ones."""
    return vl.run(models["mha"], from_images(IMAGES[:2]), [Attention()], batch_size=2, progress=False)


@pytest.fixture(scope="module")
def naive(models):
    """Per-sample traces, one at a time, reduced by loops: ``{(layer, segment): mass}`` and ``[layer, token]``
    image profile, both means over samples and heads of the last position's row (the decision position)."""
    m = models["gqa"]
    n_prefill = len(m.processor.tokenizer(ANSWER_PREFIX, add_special_tokens=False)["input_ids"])
    mass: dict[tuple[int, str], float] = {}
    profiles = []
    for image in IMAGES:
        t = vl.trace(m, image, QALIGN_PROMPT, prefill=ANSWER_PREFIX)
        row = t.attention[:, :, t.query_positions.tolist().index(len(t.tokens) - 1)].double().mean(1)  # [layer, key]
        labels = t.tokens.segment.tolist()
        labels[len(labels) - n_prefill:] = ["answer"] * n_prefill  # the prefilled answer start
        for i, layer in enumerate(t.attention_layers):
            for key, segment in enumerate(labels):
                mass[layer + 1, segment] = mass.get((layer + 1, segment), 0.0) + float(row[i, key]) / len(IMAGES)
        span = t.spans["image"]
        profiles.append(row[:, span.start:span.stop].numpy())
    return mass, np.mean(profiles, axis=0)


def panel(fig, label):
    found = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(found) == 1, [ax.get_label() for ax in fig.axes]
    return found[0]


def mappable(ax):
    return ([c for c in ax.collections if c.get_array() is not None] + list(ax.get_images()))[-1]


def values(ax) -> np.ndarray:
    return np.asarray(mappable(ax).get_array(), dtype=float)


def limits(ax):
    norm = mappable(ax).norm
    return norm.vmin, norm.vmax


def bands(ax) -> dict[str, dict[float, tuple[float, float]]]:
    """Each stacked band's (bottom, top) at each layer, read back from its polygon."""
    out = {}
    for poly in ax.collections:
        xy = poly.get_paths()[0].vertices
        out[poly.get_label()] = {x: (xy[xy[:, 0] == x, 1].min(), xy[xy[:, 0] == x, 1].max()) for x in set(xy[:, 0])}
    return out


def head_mean(run, table, keys):
    return run[f"attention.{table}"].groupby(keys).mass.mean()


# ------------------------------------------------------------------------------------------------ one run
def test_attention_mass_area_sums_to_one_and_is_the_naive_mean(run_a, naive):
    mass, _ = naive
    ax = panel(plot.run_attention_mass(run_a), "attention_mass")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["system", "image", "instruction", "answer"]
    assert "5 samples" in ax.get_title() and "decision position" in ax.get_title()
    drawn = bands(ax)
    top = drawn["answer"]
    np.testing.assert_allclose([top[x][1] for x in (1, 2, 3)], 1.0, atol=1e-6)
    for segment, per_layer in drawn.items():
        for layer, (low, high) in per_layer.items():
            assert high - low == pytest.approx(mass[int(layer), segment], abs=1e-5), (segment, layer)
    assert {s for (_, s), v in mass.items() if v > 0} == set(drawn)  # the description (never generated) is left out


def test_attention_mass_of_chosen_heads_and_layers(run_a):
    ax = panel(plot.run_attention_mass(run_a, heads=[1, 3], layers=[2, 3]), "attention_mass")
    expected = run_a["attention.segments"].query("head in [1, 3]").groupby(["layer", "segment"]).mass.mean()
    drawn = bands(ax)
    assert sorted(drawn["image"]) == [2.0, 3.0]
    for segment, per_layer in drawn.items():
        for layer, (low, high) in per_layer.items():
            assert high - low == pytest.approx(expected[int(layer), segment], abs=1e-12)
    assert "heads [1, 3]" in ax.get_title()


def test_image_profile_heatmap_is_the_head_mean(run_a, naive):
    fig = plot.run_image_profile(run_a)
    ax = panel(fig, "image_profile")
    expected = head_mean(run_a, "image_profile", ["layer", "token"]).unstack().to_numpy()
    np.testing.assert_allclose(values(ax), expected, rtol=1e-12)
    np.testing.assert_allclose(values(ax), naive[1], atol=1e-5)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "2", "3"]
    assert limits(ax) == pytest.approx((0.0, expected.max()))
    assert mappable(ax).norm.gamma == 0.5  # square-root scale, as for one trace
    assert fig.axes[-1].get_ylabel() == "mean attention (sqrt scale)"
    one = panel(plot.run_image_profile(run_a, heads=2, scale="linear"), "image_profile")
    head2 = run_a["attention.image_profile"].query("head == 2").pivot(index="layer", columns="token", values="mass")
    np.testing.assert_allclose(values(one), head2.to_numpy(), rtol=1e-12)


def test_patch_grid_is_the_image_profile_row_by_row(run_a):
    fig = plot.run_patch_grid(run_a)
    ax = panel(fig, "patch:4x4")
    profile = head_mean(run_a, "image_profile", ["layer", "token"]).loc[3].to_numpy()
    np.testing.assert_allclose(values(ax), profile.reshape(4, 4), rtol=1e-12)  # LLaVA-1.5: no newline tokens
    assert "layer 3" in fig.get_suptitle() and "5 samples" in ax.get_title()
    second = plot.run_patch_grid(run_a, layer=2)
    grid = head_mean(run_a, "grid", ["layer", "row", "col"]).loc[2].unstack().to_numpy()
    np.testing.assert_allclose(values(panel(second, "patch:4x4")), grid, rtol=1e-12)


def test_folder_and_table_draw_what_the_result_draws(run_a):
    direct = values(panel(plot.run_image_profile(run_a), "image_profile"))
    for source in (run_a.folder, str(run_a.folder / "results"), run_a["attention.image_profile"]):
        np.testing.assert_array_equal(values(panel(plot.run_image_profile(source), "image_profile")), direct)
    loaded = RunResult.load(run_a.folder)
    assert bands(panel(plot.run_attention_mass(loaded), "attention_mass")) == \
        bands(panel(plot.run_attention_mass(run_a), "attention_mass"))


def test_files_are_written_and_not_blank(run_a, tmp_path):
    for name, draw in (("mass", plot.run_attention_mass), ("profile", plot.run_image_profile),
                       ("grid", plot.run_patch_grid)):
        draw(run_a, path=tmp_path / f"{name}.png")
        with Image.open(tmp_path / f"{name}.png") as im:
            pixels = np.asarray(im.convert("L"), dtype=float)
        assert pixels.std() > 10 and (pixels < 128).mean() > 0.01, name  # ink on white
    plot.compare_runs({"a": run_a, "b": run_a}, "patch_grid", path=tmp_path / "cmp.svg")
    assert (tmp_path / "cmp.svg").read_text().count("<path") > 10


# --------------------------------------------------------------------------------------------- two runs
@pytest.mark.parametrize("figure, suffix", [("image_profile", ""), ("patch_grid", ":4x4")])
def test_compared_heatmaps_share_one_scale_and_difference_is_b_minus_a(run_a, run_b, figure, suffix):
    fig = plot.compare_runs({"one-stage": run_a, "two-stage": run_b}, figure)
    left, right = panel(fig, f"{figure}:one-stage{suffix}"), panel(fig, f"{figure}:two-stage{suffix}")
    assert limits(left) == limits(right)
    assert max(values(left).max(), values(right).max()) == pytest.approx(limits(left)[1])
    diff = panel(fig, f"{figure}:difference{suffix}")
    np.testing.assert_allclose(values(diff), values(right) - values(left), atol=1e-12)
    lo, hi = limits(diff)
    assert lo == pytest.approx(-hi) and hi == pytest.approx(np.abs(values(diff)).max())


def test_compared_mass_shares_the_y_scale_and_difference_is_b_minus_a(run_a, run_b):
    fig = plot.compare_runs({"one-stage": run_a, "two-stage": run_b}, "attention_mass")
    left, right = panel(fig, "attention_mass:one-stage"), panel(fig, "attention_mass:two-stage")
    assert left.get_ylim() == right.get_ylim() == (0.0, pytest.approx(1.0))
    a, b = (head_mean(r, "segments", ["layer", "segment"]) for r in (run_a, run_b))
    lines = {line.get_label(): line for line in panel(fig, "attention_mass:difference").get_lines()
             if not line.get_label().startswith("_")}
    assert sorted(lines) == ["answer", "image", "instruction", "system"]
    for segment, line in lines.items():
        assert list(line.get_xdata()) == [1, 2, 3]
        np.testing.assert_allclose(line.get_ydata(), (b - a).xs(segment, level="segment").to_numpy(), atol=1e-12)


def test_a_run_compared_with_itself_differs_by_zero(run_a):
    for figure, label in (("image_profile", "image_profile:difference"), ("patch_grid", "patch_grid:difference:4x4")):
        fig = plot.compare_runs({"a": run_a, "b": run_a}, figure)
        assert not values(panel(fig, label)).any()
    fig = plot.compare_runs({"a": run_a, "b": run_a}, "attention_mass")
    assert all(not np.any(line.get_ydata()) for line in panel(fig, "attention_mass:difference").get_lines())


def test_runs_that_do_not_line_up_get_no_difference(run_a, shallow):
    for figure in ("attention_mass", "image_profile"):
        fig = plot.compare_runs({"deep": run_a, "shallow": shallow}, figure)
        assert not [ax for ax in fig.axes if ax.get_label().endswith(":difference")]
        with pytest.raises(vl.VlmLensError, match="do not line up.*different layers"):
            plot.compare_runs({"deep": run_a, "shallow": shallow}, figure, difference=True)
    fig = plot.compare_runs({"deep": run_a, "shallow": shallow}, "patch_grid", layer=2, difference=True)
    panel(fig, "patch_grid:difference:4x4")  # layer 2 exists in both: the grids line up


# -------------------------------------------------------------------------------------------- bad input
def test_bad_input_says_what_to_do(run_a, models):
    no_attention = RunResult({k: v for k, v in run_a.tables.items() if not k.startswith("attention.")},
                             run_a.skipped, run_a.meta)
    for draw in (plot.run_attention_mass, plot.run_image_profile, plot.run_patch_grid):
        with pytest.raises(vl.VlmLensError, match=r"analyses=\[\.\.\., vl\.analyses\.Attention\(\)\]"):
            draw(no_attention)
    not_spatial = RunResult({**run_a.tables, "attention.grid": run_a["attention.grid"].iloc[:0]}, run_a.skipped,
                            run_a.meta)
    with pytest.raises(vl.VlmLensError, match="no patch-grid rows.*not spatial"):
        plot.run_patch_grid(not_spatial)
    with pytest.raises(vl.VlmLensError, match="figure='overlay': expected one of attention_mass, image_profile, "
                                              "patch_grid"):
        plot.compare_runs({"a": run_a, "b": run_a}, "overlay")
    with pytest.raises(vl.VlmLensError, match="exactly two"):
        plot.compare_runs({"a": run_a}, "attention_mass")
    with pytest.raises(vl.VlmLensError, match="heads=7: expected head indices in 0..3"):
        plot.run_attention_mass(run_a, heads=7)
    with pytest.raises(vl.VlmLensError, match=r"layer=9: expected a layer of this run \(1..3"):
        plot.run_patch_grid(run_a, layer=9)
    with pytest.raises(vl.VlmLensError, match="lacks columns.*segment"):
        plot.run_attention_mass(run_a["attention.grid"])
    with pytest.raises(vl.VlmLensError, match="holds no finished run"):
        plot.run_attention_mass(run_a.folder / "state")
    t = vl.trace(models["mha"], IMAGES[0], QALIGN_PROMPT)
    with pytest.raises(vl.VlmLensError, match="for one Trace use vl.plot.attention_mass"):
        plot.run_attention_mass(t)
