"""Figures of one trace read it where the level is decided, say so, label tokens with the BIQA segments, draw
attention in one colour convention, and read well: no text outside the figure, legends off the data, whole layers
as ticks, level words written in full."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from conftest import PROMPT, random_image
from forced_answers import forced_trace
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

import vlm_lens as vl
from vlm_lens import plot
from vlm_lens.biqa.answer import locate, segment_labels
from vlm_lens.plot.style import ATTENTION_CMAP, HIGHLIGHT, style


@pytest.fixture(scope="module")
def rated(models, image_path):
    """A one-stage answer: a description, then the level sentence."""
    return forced_trace(models["mha"], image_path, "noisy and dark . the quality of the image is excellent .")


def axes(fig: Figure, label: str):
    found = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(found) == 1, [ax.get_label() for ax in fig.axes]
    return found[0]


def texts_of(fig: Figure):
    """The texts a drawn figure shows: every visible text, except tick labels of ticks outside the axis' view
    (matplotlib keeps those but does not draw them)."""
    hidden = set()
    for ax in fig.axes:
        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = min(lo, hi), max(lo, hi)
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo - 1e-9 <= tick.get_loc() <= hi + 1e-9:
                    hidden.update({id(tick.label1), id(tick.label2)})
    return [t for t in fig.findobj(matplotlib.text.Text)
            if t.get_visible() and t.get_text().strip() and id(t) not in hidden]


def drawn(fig: Figure) -> Figure:
    """``fig`` laid out and drawn as :func:`vlm_lens.plot.save` draws it (Agg, the figures' style)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    with style():
        FigureCanvasAgg(fig).draw()
    return fig


def assert_nothing_clipped(fig: Figure) -> None:
    """Every visible text (titles, tick labels, legends, colour-bar labels) lies inside the figure."""
    drawn(fig)
    box = fig.bbox
    outside = []
    for text in texts_of(fig):
        extent = text.get_window_extent()
        if extent.x0 < box.x0 - 1 or extent.x1 > box.x1 + 1 or extent.y0 < box.y0 - 1 or extent.y1 > box.y1 + 1:
            outside.append(text.get_text())
    assert outside == [], outside


def test_every_figure_reads_the_decision_position_by_default(rated):
    decision = locate(rated).decision_pos
    where = f"decision position {decision} (before 'excellent')"
    top = plot.topk(rated, k=3)
    assert where in axes(top, "topk").get_title()
    assert [t.get_text() for t in axes(top, "topk").texts] == \
        [t.get_text() for t in axes(plot.topk(rated, decision, k=3), "topk").texts]
    lines = axes(plot.target_words(rated, ["good", "poor"]), "target_words")
    table = rated.lens_targets(["good", "poor"], positions=[decision])
    np.testing.assert_allclose(lines.get_lines()[0].get_ydata(), table[table.target == "good"].prob, rtol=1e-6)
    heat = axes(plot.attention(rated, image_tokens="full", scale="linear"), "attention")
    row = rated.query_positions.tolist().index(decision)
    expected = rated.attention[:, :, row, : decision + 1].mean(1).numpy()
    shown = [c for c in heat.collections if c.get_array() is not None][0].get_array()
    np.testing.assert_allclose(np.asarray(shown).reshape(expected.shape), expected, rtol=1e-6)
    assert where in heat.get_title()
    mass = plot.attention_mass(rated)
    assert where in axes(mass, "attention_mass").get_title()
    overlay = plot.patch_overlay(rated)
    assert where in overlay.get_suptitle()


def test_the_latent_map_is_a_window_around_the_decision_with_whole_words(rated):
    decision = locate(rated).decision_pos
    ax = axes(plot.latent_output(rated), "latent_output")
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[-4:] == ["is", "excellent", ".", "</s>"]  # ends 3 positions after the decision position
    assert len(labels) == min(14, decision + 4 - 0)
    outline = [p for p in ax.patches if (p.get_gid() or "") == f"decision:{decision}"]
    assert len(outline) == 1 and matplotlib.colors.to_hex(outline[0].get_edgecolor()) == HIGHLIGHT.lower()
    written = {t.get_text() for t in ax.texts}
    assert not any(w.endswith("…") for w in written if w.startswith("excel"))
    assert f"around the decision position {decision}" in ax.get_title()


def test_tokens_are_labelled_with_the_biqa_segments(rated):
    labels = segment_labels(rated, locate(rated))
    heat = axes(plot.attention(rated, image_tokens="full"), "attention")
    names = [t.get_text() for t in heat.texts if (t.get_gid() or "").startswith("segment:")]
    decision = locate(rated).decision_pos
    expected = [s for i, s in enumerate(labels[:decision + 1]) if i == 0 or labels[i - 1] != s]
    assert names == expected and "description" in names and "answer" in names
    legend = [t.get_text() for t in axes(plot.attention_mass(rated), "attention_mass").get_legend().get_texts()]
    assert legend == [s for s in ("system", "image", "instruction", "description", "answer")
                      if s in labels[:decision + 1]]


def test_one_colour_convention_for_attention(rated):
    heat = plot.attention(rated)
    overlay = plot.patch_overlay(rated)
    mesh = [c for c in axes(heat, "attention").collections if c.get_array() is not None][0]
    shown = axes(overlay, "patch:base").get_images()[-1]
    assert mesh.get_cmap().name == ATTENTION_CMAP and shown.get_cmap().name == f"{ATTENTION_CMAP}_overlay"
    assert isinstance(mesh.norm, PowerNorm) and isinstance(shown.norm, PowerNorm)  # both square-root scales
    bottom, top = shown.get_cmap()(0.0), shown.get_cmap()(1.0)
    assert bottom[3] == 0.0 and top[3] > 0.5  # the picture shows through where attention is low
    np.testing.assert_allclose(shown.get_cmap()(0.7)[:3], matplotlib.colormaps[ATTENTION_CMAP](0.7)[:3])
    labels = [ax.get_ylabel() for f in (heat, overlay) for ax in f.axes if ax.get_label() == "<colorbar>"]
    assert labels == ["attention (sqrt scale)"] * 2


def test_an_image_given_in_memory_is_said_not_silently_dropped(models):
    t = vl.trace(models["mha"], random_image(4), PROMPT)
    fig = plot.patch_overlay(t, layer=-1)
    notes = [x.get_text() for x in fig.texts if x.get_gid() == "note:no-picture"]
    assert len(notes) == 1 and "given in memory" in notes[0] and "image=" in notes[0]
    with_picture = plot.patch_overlay(t, image=random_image(4))
    assert not [x for x in with_picture.texts if x.get_gid() == "note:no-picture"]
    assert len(axes(with_picture, "patch:base").get_images()) == 2


def test_figures_read_well(rated, models):
    figures = [plot.latent_output(rated), plot.topk(rated), plot.target_words(rated), plot.attention(rated),
               plot.attention_mass(rated), plot.patch_overlay(rated)]
    for fig in figures:
        assert_nothing_clipped(fig)
    off = Figure(figsize=(2, 1))
    off.text(0.8, 0.5, "a label that runs off the figure")
    with pytest.raises(AssertionError, match="runs off"):  # the check can fail
        assert_nothing_clipped(off)
    for fig, label in ((figures[2], "target_words"), (figures[4], "attention_mass")):
        ax = axes(drawn(fig), label)
        assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1  # the legend is off the data
    shallow = vl.trace(models["gqa"], random_image(1), PROMPT, generate=2)
    ticks = [t.get_text() for t in axes(plot.attention_mass(shallow), "attention_mass").get_xticklabels()]
    assert ticks == [str(b) for b in shallow.attention_blocks]  # whole layers, never 1.5
    ranks = axes(plot.target_words(rated, ["good", "poor"], value="rank"), "target_words")
    shown = [t.get_text() for t in ranks.get_yticklabels()]
    assert shown[0] == "1" and all(t.isdigit() for t in shown)  # whole ranks, not powers of ten
