"""Per-head views: each head's panel is that head's attention row; each head's mass by segment equals the BIQA
layer's own ``attention_mass`` table (one trace) or the run's ``attention.segments`` table (a dataset)."""

from __future__ import annotations

import numpy as np
import pytest
from forced_answers import forced_trace
from test_reading import assert_nothing_clipped

from vlm_lens import plot
from vlm_lens.biqa.answer import locate
from vlm_lens.biqa.attention import attention_mass
from vlm_lens.core.errors import VlmLensError


@pytest.fixture(scope="module")
def rated(models, tmp_path_factory):
    from conftest import random_image

    return forced_trace(models["gqa"], random_image(8), "blurry . the quality of the image is poor .")


def axes(fig, label):
    found = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(found) == 1, [ax.get_label() for ax in fig.axes]
    return found[0]


def values(ax):
    return np.asarray([c for c in ax.collections if c.get_array() is not None][0].get_array())


def test_each_head_panel_is_that_heads_row(rated):
    decision = locate(rated).decision_pos
    fig = plot.attention_heads(rated, image_tokens="full", scale="linear")
    row = rated.query_positions.tolist().index(decision)
    n_heads = rated.attention.shape[1]
    for h in range(n_heads):
        expected = rated.attention[:, h, row, : decision + 1].numpy()
        np.testing.assert_allclose(values(axes(fig, f"head:{h}")).reshape(expected.shape), expected, rtol=1e-6)
    assert f"decision position {decision}" in fig.get_suptitle()
    assert_nothing_clipped(fig)


def test_head_mass_is_the_biqa_attention_mass(rated):
    fig = plot.head_mass(rated)
    table = attention_mass(rated, query="decision")
    for segment, rows in table.groupby("segment"):
        if rows["mass"].eq(0).all() and segment not in ("system", "image", "instruction", "description", "answer"):
            continue
        expected = rows.pivot(index="layer", columns="head", values="mass").to_numpy()
        np.testing.assert_allclose(values(axes(fig, f"head_mass:{segment}")).reshape(expected.shape), expected,
                                   atol=1e-6)
    chosen = plot.head_mass(rated, segments=["image", "description"])
    assert [ax.get_label() for ax in chosen.axes if ax.get_label().startswith("head_mass")] == \
        ["head_mass:image", "head_mass:description"]
    with pytest.raises(VlmLensError, match="segments"):
        plot.head_mass(rated, segments=["response"])
    assert_nothing_clipped(fig)


def test_run_head_mass_is_the_segments_table(zoo_runs):
    r = zoo_runs["two-stage"]
    fig = plot.run_head_mass(r)
    table = r["attention.segments"]
    for segment, rows in table.groupby("segment"):
        expected = rows.pivot(index="layer", columns="head", values="mass").to_numpy()
        np.testing.assert_allclose(values(axes(fig, f"head_mass:{segment}")).reshape(expected.shape), expected)
    assert "6 samples" in fig.get_suptitle()
