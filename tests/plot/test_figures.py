"""Figures of one Trace, read back from the Figure objects: ticks carry the right layers and tokens, cells and bars
carry the lens's own numbers, colours equal the attention rows, files are written and not blank, and drawing leaves
matplotlib's global state as it was."""

from __future__ import annotations

import dataclasses

import matplotlib
import numpy as np
import pytest
from conftest import PROMPT, random_image
from matplotlib.figure import Figure
from PIL import Image

import vlm_lens as vl
from vlm_lens import plot
from vlm_lens.plot import trace_data
from vlm_lens.plot.style import HIGHLIGHT, new_figure, thin_ticks, token_label


@pytest.fixture(scope="module")
def t(models, image_path):
    return vl.trace(models["mha"], image_path, PROMPT, generate=4)


@pytest.fixture(scope="module")
def t_next(models):
    return vl.trace(models["next"], random_image(1, (60, 40)), PROMPT, generate=2)


def axes(fig: Figure, label: str):
    found = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(found) == 1, [ax.get_label() for ax in fig.axes]
    return found[0]


def ticks(labels) -> list[str]:
    return [label.get_text() for label in labels]


def mesh_values(ax) -> np.ndarray:
    mesh = [c for c in ax.collections if hasattr(c, "get_array") and c.get_array() is not None][0]
    return np.asarray(mesh.get_array()).ravel(), mesh


# ------------------------------------------------------------------------------------------------ latent output
def test_latent_output_cells_are_the_lens_top1(t):
    fig = plot.latent_output(t, positions="response", context=2, max_label=8)
    ax = axes(fig, "latent_output")
    shown = list(range(t.prompt_length - 2, len(t.tokens)))
    assert ticks(ax.get_yticklabels()) == [str(l) for l in t.layers]
    assert ticks(ax.get_xticklabels()) == [token_label(t.tokens.text[p]) for p in shown]
    top = t.lens(topk=1, positions=shown)
    values, _ = mesh_values(ax)
    expected = top.pivot(index="layer", columns="pos", values="prob").to_numpy()
    np.testing.assert_allclose(values.reshape(expected.shape), expected, rtol=1e-6)
    written = [text.get_text() for text in ax.texts]
    words = top.pivot(index="layer", columns="pos", values="token").to_numpy()
    assert written == [token_label(w)[:8] if len(token_label(w)) <= 8 else token_label(w)[:7] + "…"
                       for w in words.ravel()]


def test_latent_output_image_modes(t):
    n_image = len(t.spans["image"])
    collapsed = ticks(axes(plot.latent_output(t, positions=None), "latent_output").get_xticklabels())
    assert collapsed.count(f"<image ×{n_image}>") == 1 and "<image>" not in collapsed
    band = axes(plot.latent_output(t, positions=None, image_tokens="band"), "latent_output")
    assert ticks(band.get_xticklabels()).count(f"image ({n_image})") == 1
    values, _ = mesh_values(band)
    assert values.size == len(t.layers) * len(t.tokens)  # 16 image tokens: one narrow column each, no text
    assert len(band.texts) == len(t.layers) * (len(t.tokens) - n_image)
    hidden = ticks(axes(plot.latent_output(t, positions=None, image_tokens="hide"), "latent_output").get_xticklabels())
    assert len(hidden) == len(t.tokens) - n_image and not [x for x in hidden if x.startswith(("<image", "image ("))]
    with pytest.raises(vl.VlmLensError, match="image_tokens"):
        plot.latent_output(t, image_tokens="squash")


def test_latent_output_colour_modes(t):
    position = t.prompt_length - 1
    by_word = mesh_values(axes(plot.latent_output(t, positions=[position], color="good"), "latent_output"))[0]
    expected = t.lens_targets(["good"], positions=[position]).prob.to_numpy()
    np.testing.assert_allclose(by_word, expected, rtol=1e-6)
    final = mesh_values(axes(plot.latent_output(t, positions=[position], color="final"), "latent_output"))[0]
    top_last = t.lens(topk=1, positions=[position], layers=[t.layers[-1]])
    assert final[-1] == pytest.approx(float(top_last.prob.iloc[0]), rel=1e-6)
    out = t.lens_targets([int(top_last.token_id.iloc[0])], positions=[position]).prob.to_numpy()
    np.testing.assert_allclose(final, out, rtol=1e-6)


# ------------------------------------------------------------------------------------------------------- top-k
def test_topk_bars_carry_the_lens_and_highlight_the_output(t):
    k = 3
    position = t.prompt_length - 1
    fig = plot.topk(t, position, k=k)
    ax = axes(fig, "topk")
    table = t.lens(topk=k, positions=[position])
    assert ticks(ax.get_yticklabels()) == [str(l) for l in t.layers]
    assert ticks(ax.get_xticklabels()) == [f"rank {r}" for r in range(1, k + 1)]
    assert len(ax.patches) == len(t.layers) * k
    assert [text.get_text() for text in ax.texts] == [f"{token_label(w, 10)} {p:.2f}"
                                                      for w, p in zip(table.token, table.prob)]
    generated = t.tokens.id.iloc[t.prompt_length]  # greedy: the first answer token is the last layer's top-1
    for bar, token_id in zip(ax.patches, table.token_id):
        highlighted = matplotlib.colors.to_hex(bar.get_facecolor()) == HIGHLIGHT.lower()
        assert highlighted == (token_id == generated)
    assert matplotlib.colors.to_hex(ax.patches[(len(t.layers) - 1) * k].get_facecolor()) == HIGHLIGHT.lower()
    ranged = axes(plot.topk(t, k=2, layer_range=(1, 2)), "topk")
    assert ticks(ranged.get_yticklabels()) == ["1", "2"]


def test_target_words_lines(t):
    words = ["good", "poor", "fair"]
    ax = axes(plot.target_words(t, words, t.prompt_length - 1), "target_words")
    table = t.lens_targets(words, positions=[t.prompt_length - 1])
    assert [line.get_label() for line in ax.get_lines()] == words
    for line, word in zip(ax.get_lines(), words):
        np.testing.assert_allclose(line.get_ydata(), table[table.target == word].prob, rtol=1e-6)
        assert list(line.get_xdata()) == t.layers
    rank = axes(plot.target_words(t, words, value="rank"), "target_words")
    assert rank.get_yscale() == "log" and rank.yaxis_inverted()


# --------------------------------------------------------------------------------------------------- attention
def test_attention_heatmap_is_the_rows(t):
    query = t.prompt_length - 1
    fig = plot.attention(t, query, image_tokens="full", scale="linear")
    ax = axes(fig, "attention")
    row = t.query_positions.tolist().index(query)
    expected = t.attention[:, :, row, : query + 1].mean(1).numpy()
    values, mesh = mesh_values(ax)
    np.testing.assert_allclose(values.reshape(expected.shape), expected, rtol=1e-6)
    assert ticks(ax.get_yticklabels()) == [str(l + 1) for l in t.attention_layers]
    assert ticks(ax.get_xticklabels()) == [token_label(x) for x in t.tokens.text[: query + 1]]
    segments = t.tokens.segment[: query + 1].tolist()
    changes = sum(a != b for a, b in zip(segments, segments[1:]))
    assert len(ax.lines) == changes
    names = [text.get_text() for text in ax.texts if (text.get_gid() or "").startswith("segment:")]
    assert names == [s for i, s in enumerate(segments) if i == 0 or segments[i - 1] != s]
    one_head = mesh_values(axes(plot.attention(t, query, heads=1, image_tokens="full"), "attention"))[0]
    np.testing.assert_allclose(one_head.reshape(expected.shape), t.attention[:, 1, row, : query + 1].numpy())


def test_attention_collapsed_image_column_is_the_image_mass(t):
    ax = axes(plot.attention(t, query=-1), "attention")
    span = t.spans["image"]
    labels = ticks(ax.get_xticklabels())
    column = labels.index(f"<image ×{len(span)}>")
    values = mesh_values(ax)[0].reshape(len(t.attention_layers), -1)
    expected = t.attention[:, :, -1, span.start:span.stop].mean(1).sum(-1).numpy()
    np.testing.assert_allclose(values[:, column], expected, rtol=1e-5)
    with pytest.raises(vl.VlmLensError, match="no attention row"):
        plot.attention(t, query=2)


def test_attention_mass_sums_to_one_per_layer(t):
    matrix, layers, _ = trace_data.attention_matrix(t, t.prompt_length - 1, "mean", None)
    table = trace_data.segment_mass(matrix, t.tokens.segment.tolist(), layers)
    np.testing.assert_allclose(table.groupby("layer").mass.sum(), 1.0, rtol=1e-5)
    segments = t.tokens.segment[: matrix.shape[1]].to_numpy()
    naive = {(l, s): float(sum(matrix[i, k] for k in range(len(segments)) if segments[k] == s))
             for i, l in enumerate(layers) for s in set(segments)}
    for r in table.itertuples():
        assert r.mass == pytest.approx(naive[(r.layer, r.segment)], rel=1e-5)
    ax = axes(plot.attention_mass(t, t.prompt_length - 1), "attention_mass")
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["system", "image", "instruction"]


def test_attention_mass_of_one_layer_is_a_stacked_bar_of_its_masses(t):
    matrix, layers, _ = trace_data.attention_matrix(t, None, "mean", None)
    table = trace_data.segment_mass(matrix, t.tokens.segment.tolist(), layers)
    one = table[table.layer == layers[-1]]
    fig = new_figure(4, 3)
    ax = fig.add_subplot()
    plot.draw_attention_mass(ax, one)
    heights = {bar.get_label(): bar.patches[0].get_height() for bar in ax.containers}
    assert heights == pytest.approx(dict(zip(one.segment, one.mass)))
    assert ax.get_xlim() == (layers[-1] - 0.5, layers[-1] + 0.5)


def test_patch_overlay_lays_the_row_on_the_grid(t, t_next):
    fig = plot.patch_overlay(t, t.prompt_length - 1)
    ax = axes(fig, "patch:base")
    span = t.spans["image"]
    rows, cols = span.grid
    grid = ax.get_images()[-1].get_array()
    query = t.prompt_length - 1
    row = t.query_positions.tolist().index(query)
    expected = t.attention[-1, :, row, span.start:span.stop].mean(0).reshape(rows, cols).numpy()
    np.testing.assert_allclose(np.asarray(grid), expected, rtol=1e-6)
    assert len(ax.get_images()) == 2  # the picture recorded in meta, then the overlay
    crops = plot.patch_overlay(t_next, value="lens", target="good", layer=1)
    blocks = t_next.spans["image"].layout
    for block in blocks:
        shown = axes(crops, f"patch:{block.name}").get_images()[-1].get_array()
        assert shown.shape == (block.rows, block.cols)
    missing = dataclasses.replace(span, layout=(), grid=None)
    flat = dataclasses.replace(t, spans={**t.spans, "image": missing})
    with pytest.raises(vl.VlmLensError, match="no patch grid"):
        plot.patch_overlay(flat)


# ------------------------------------------------------------------------------------------ legibility, files
def test_long_sequences_stay_legible(models):
    long = vl.trace(models["mha"], random_image(2), " ".join(["how would you rate this photo ?"] * 40),
                    generate=2)
    assert len(long.tokens) > 250
    latent = axes(plot.latent_output(long, positions=None, max_columns=30), "latent_output")
    assert len(latent.get_xticklabels()) == 30 and "last 30" in latent.get_title()
    att = plot.attention(long, max_columns=50)
    ax = axes(att, "attention")
    assert len(ax.get_xticklabels()) <= 50 and "bins" in ax.get_title()
    assert mesh_values(ax)[0].reshape(len(long.attention_layers), -1).sum(1) == pytest.approx(1.0, rel=1e-5)
    for fig in (latent.figure, att):
        assert max(fig.get_size_inches()) <= 30
        assert all(text.get_fontsize() >= 4 for ax in fig.axes for text in ax.texts)


def test_save_writes_each_format(t, tmp_path):
    fig = plot.topk(t, k=2)
    png = plot.save(fig, tmp_path / "f" / "topk.png", dpi=100)
    with Image.open(png) as im:
        width, height = fig.get_size_inches() * 100
        assert im.size == (round(width), round(height))
        pixels = np.asarray(im.convert("L"), dtype=float)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.01  # not blank: ink on white
    svg = plot.save(fig, tmp_path / "topk.svg")
    assert svg.read_text().lstrip().startswith("<?xml") and "rank 1" in svg.read_text()
    pdf = plot.save(fig, tmp_path / "topk.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5000
    assert plot.latent_output(t, path=tmp_path / "latent.png").axes
    assert (tmp_path / "latent.png").stat().st_size > 10_000
    with pytest.raises(vl.VlmLensError, match="suffix"):
        plot.save(fig, tmp_path / "topk.jpeg")


def test_drawing_leaves_matplotlib_global_state_alone(t):
    before = dict(matplotlib.rcParams)
    figures = [plot.latent_output(t), plot.topk(t), plot.attention(t), plot.patch_overlay(t)]
    assert all(isinstance(f, Figure) for f in figures)
    assert dict(matplotlib.rcParams) == before
    import matplotlib.pyplot as plt  # seaborn imports pyplot; vlm_lens must not register figures with it

    assert plt.get_fignums() == []


def test_trace_without_model_draws_attention_but_not_lens(t, tmp_path):
    back = vl.Trace.load(t.save(tmp_path / "t"))
    assert axes(plot.attention(back), "attention")
    with pytest.raises(vl.VlmLensError, match="model=vl.load"):
        plot.latent_output(back)


def test_accessor_forwards(t):
    plots = plot.TracePlots(t)
    assert axes(plots.topk(k=2), "topk")
    assert axes(plots.target_words(), "target_words").get_legend() is not None
    assert axes(plots.compare(t, "attention_mass"), "attention_mass:difference")


def test_token_labels_and_ticks():
    assert [token_label(x) for x in ["\n", " ", "", "\t", "  "]] == ["⏎", "␣", "∅", "⇥", "␣␣"]
    assert token_label("▁incomprehensibility", limit=6) == "▁inco…"
    assert token_label("中") == "U+4E2D"  # DejaVu Sans has no CJK glyphs: a readable code, not a tofu box
    assert token_label(" good ") == "good"
    assert thin_ticks(5, 10) == [0, 1, 2, 3, 4]
    picked = thin_ticks(1000, 40)
    assert len(picked) <= 40 and picked[0] == 0 and picked[-1] == 999
