"""Where one token looks: its attention row per layer (the paper's Figure 5), its mass per segment, and the same
row laid over the image's patch grid.

The drawing functions take plain arrays (``[layer, key]`` matrices, per-key labels and segments, ``layer, segment,
mass`` tables), so a row averaged over the samples of a dataset run is drawn by the same code as one Trace's row.

Every figure reads the decision position by default (:mod:`vlm_lens.plot.reading`), labels keys with the BIQA
segments (system / image / instruction / description / answer), and draws attention in one colour convention
(:data:`~vlm_lens.plot.style.ATTENTION_CMAP`: light = little, dark = much, square-root scale, a labelled colour
bar) — on a picture with low attention transparent.

Example:
    >>> fig = vl.plot.attention(t)                   # the decision position's row, heads averaged   # doctest: +SKIP
    >>> fig = vl.plot.attention_mass(t)              # by segment, description and answer apart      # doctest: +SKIP
    >>> fig = vl.plot.patch_overlay(t, layer=16, image="cat.jpg")                                    # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from . import trace_data
from .style import (
    ATTENTION_CMAP,
    ATTENTION_SCALE,
    SEGMENT_COLORS,
    attention_label,
    new_figure,
    overlay_cmap,
    save,
    style,
    thin_ticks,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    from ..tracing.lens import Lens
    from ..tracing.record import Trace

__all__ = ["attention", "attention_mass", "draw_attention", "draw_attention_mass", "draw_patch_grids",
           "patch_overlay"]


def attention(trace: "Trace", query: int | None = None, *, heads: str | int | Sequence[int] = "mean",
              layers: Sequence[int] | None = None, image_tokens: str = "collapse", max_columns: int = 80,
              scale: str = ATTENTION_SCALE, cmap: str = ATTENTION_CMAP, vmax: float | None = None,
              path: str | Path | None = None) -> "Figure":
    """Layer x context-token heatmap of one query token's attention, segment boundaries marked and labelled.

    Args:
        trace: A Trace with attention rows.
        query: The attending position; it must be one of ``trace.query_positions`` (default: the decision
            position, else the last prompt position, else the last query position).
        heads: ``"mean"`` over heads, one head index, or a list of heads to average.
        layers: Layers to show, numbered like hidden states (1 = first decoder block); default all.
        image_tokens: Image keys ``"collapse"`` into one column per image (their summed attention), a ``"band"``
            of binned columns, ``"full"`` or ``"hide"``.
        max_columns: More key columns than this are summed in bins within each segment.
        scale: Colour scale ``"linear"``, ``"sqrt"`` (default: keeps attention sinks from flattening the rest) or
            ``"log"``.
        cmap: Colormap.
        vmax: Top of the colour scale (default: the largest value shown).
        path: Also save the figure there.

    Returns:
        The Figure; the heatmap Axes is labelled ``"attention"`` (y ticks: layers, x ticks: key tokens, coloured by
        segment), with a line at each segment change and the segment names above (texts ``gid="segment:<name>"``).

    Example:
        >>> fig = attention(t, query=-1, heads=[0, 1], image_tokens="band")             # doctest: +SKIP
    """
    matrix, numbers, position = trace_data.attention_matrix(trace, query, heads, layers)
    columns = trace_data.build_columns(trace, list(range(position + 1)), image_tokens)
    columns, note = trace_data.bin_columns(columns, max_columns)
    values = column_values(matrix, columns)
    with style():
        fig = new_figure(2.4 + 0.22 * sum(c.width for c in columns), 2.1 + 0.24 * len(numbers))
        ax = fig.add_subplot()
        mesh = draw_attention(ax, values, columns, numbers, norm=norm_for(scale, vmax or float(values.max())),
                              cmap=cmap)
        head_text = "mean over heads" if heads == "mean" else f"heads {heads}"
        ax.set_title(f"attention of the {trace_data.reading(trace).describe(trace, position)}, {head_text}"
                     + (f"\n{note}" if note else ""), pad=22)
        fig.colorbar(mesh, ax=ax, label=attention_label(scale), shrink=0.9)
    if path is not None:
        save(fig, path)
    return fig


def column_values(matrix: np.ndarray, columns: Sequence["trace_data.Column"]) -> np.ndarray:
    """``[layer, column]``: attention summed over the keys of each column (a column's attention mass)."""
    return np.stack([matrix[:, list(c.positions)].sum(axis=1) for c in columns], axis=1)


def norm_for(scale: str, vmax: float, vmin: float = 0.0) -> "Normalize":
    from matplotlib.colors import LogNorm, Normalize, PowerNorm

    from ..core.errors import VlmLensError

    vmax = vmax if vmax > vmin else vmin + 1e-6
    if scale == "linear":
        return Normalize(vmin, vmax)
    if scale == "sqrt":
        return PowerNorm(0.5, vmin, vmax)
    if scale == "log":
        return LogNorm(max(vmax * 1e-4, 1e-8), vmax, clip=True)
    raise VlmLensError(f"scale={scale!r}: expected 'linear', 'sqrt' or 'log'.")


def draw_attention(ax: "Axes", values: np.ndarray, columns: Sequence["trace_data.Column"], layers: Sequence[int], *,
                   norm: "Normalize", cmap: str = ATTENTION_CMAP, segment_axis: bool = True):
    """Draw ``[layer, column]`` attention on ``ax`` with the key tokens as x ticks, a line at each segment change
    and the segment names on a top axis. Returns the mesh (for a colour bar)."""
    widths = np.array([c.width for c in columns])
    x = np.concatenate([[0.0], np.cumsum(widths)])
    y = np.arange(len(layers) + 1) - 0.5
    mesh = ax.pcolormesh(x, y, values, cmap=cmap, norm=norm, edgecolors="face", linewidth=0)
    ticks, labels, segments = trace_data.column_ticks(columns, x)
    keep = thin_ticks(len(ticks), 70)
    ax.set_xticks([ticks[i] for i in keep], [labels[i] for i in keep], rotation=60, ha="right",
                  rotation_mode="anchor")
    for tick, i in zip(ax.get_xticklabels(), keep):
        tick.set_color(tuple(0.75 * v for v in _rgb(SEGMENT_COLORS.get(segments[i], "#000000"))))
    rows = thin_ticks(len(layers), 40)
    ax.set_yticks(rows, [str(layers[i]) for i in rows])
    starts = [0] + [j for j in range(1, len(columns)) if columns[j].segment != columns[j - 1].segment]
    for j in starts[1:]:
        ax.axvline(x[j], color="#1f77b4", linewidth=1.0)
    if segment_axis:
        _segment_names(ax, x, columns, starts)
    ax.set_xlim(0, x[-1])
    ax.set_xlabel("key position (context token)")
    ax.set_ylabel("layer (decoder block)")
    ax.set_label("attention")
    return mesh


def _segment_names(ax: "Axes", x: np.ndarray, columns: Sequence["trace_data.Column"], starts: list[int]) -> None:
    """Segment names above the axes, centred on each segment; a name wider than its segment alternates with its
    neighbours between two rows so that none overlap. Each text has ``gid="segment:<name>"``."""
    from matplotlib.transforms import blended_transform_factory, offset_copy

    transform = blended_transform_factory(ax.transData, ax.transAxes)
    points_per_unit = ax.figure.get_size_inches()[0] * ax.get_position().width * 72 / max(x[-1], 1)
    bounds = starts + [len(columns)]
    level = 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        name = columns[a].segment
        narrow = (x[b] - x[a]) * points_per_unit < 5.5 * len(name)
        level = 1 - level if narrow or level else 0
        shifted = offset_copy(transform, fig=ax.figure, y=2 + 9 * level, units="points")
        ax.text((x[a] + x[b]) / 2, 1.0, name, transform=shifted, ha="center", va="bottom",
                fontsize=7, fontweight="bold", color=SEGMENT_COLORS.get(name, "black"), gid=f"segment:{name}")


def attention_mass(trace: "Trace", query: int | None = None, *, heads: str | int | Sequence[int] = "mean",
                   layers: Sequence[int] | None = None, path: str | Path | None = None) -> "Figure":
    """Attention mass of one query token by segment (system / image / instruction / description / answer) per
    layer, as a stacked area that sums to 1 at every layer; default query: the decision position.

    Returns:
        The Figure; its Axes is labelled ``"attention_mass"``, with one legend entry per segment (outside the
        data, on the right).

    Example:
        >>> fig = attention_mass(t, query=-1)                                    # doctest: +SKIP
    """
    matrix, numbers, position = trace_data.attention_matrix(trace, query, heads, layers)
    read = trace_data.reading(trace)
    table = trace_data.segment_mass(matrix, read.labels, numbers)
    with style():
        fig = new_figure(5.6, 3.3)
        ax = fig.add_subplot()
        draw_attention_mass(ax, table)
        ax.set_title(f"attention of the {read.describe(trace, position)}\nby segment, "
                     + ("mean over heads" if heads == "mean" else f"heads {heads}"))
    if path is not None:
        save(fig, path)
    return fig


def draw_attention_mass(ax: "Axes", table: pd.DataFrame) -> None:
    """Draw a ``layer, segment, mass`` table as a stacked area (segments in their sequence order), whole layers as
    ticks, the legend outside the data."""
    wide = table.pivot(index="layer", columns="segment", values="mass").fillna(0.0)
    order = [s for s in SEGMENT_COLORS if s in wide.columns] + [s for s in wide.columns if s not in SEGMENT_COLORS]
    wide = wide[order]
    colors = [SEGMENT_COLORS.get(s, "#cccccc") for s in order]
    x = wide.index.to_numpy()
    if len(x) > 1:
        ax.stackplot(x, wide.to_numpy().T, labels=order, colors=colors, alpha=0.9)
        ax.set_xlim(x.min(), x.max())
        keep = thin_ticks(len(x), 20)
        ax.set_xticks([x[i] for i in keep], [str(int(x[i])) for i in keep])
    else:  # one layer: a stacked bar (an area over one point has no width)
        bottom = 0.0
        for segment, color in zip(order, colors):
            value = float(wide[segment].iloc[0])
            ax.bar(x, [value], bottom=bottom, width=0.6, color=color, alpha=0.9, label=segment)
            bottom += value
        ax.set_xticks(x)
        ax.set_xlim(x[0] - 0.5, x[0] + 0.5)
    ax.set_ylim(0, max(1.0, float(wide.sum(axis=1).max())))
    ax.set_xlabel("layer (decoder block)")
    ax.set_ylabel("attention mass")
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_label("attention_mass")


def patch_overlay(trace: "Trace", query: int | None = None, *, value: str = "attention", layer: int = -1,
                  heads: str | int | Sequence[int] = "mean", target: str | int | None = None, image: Any = None,
                  image_index: int = 0, crop: str = "auto", alpha: float = 0.75, cmap: str = ATTENTION_CMAP,
                  scale: str | None = None, lens: "Lens | None" = None,
                  path: str | Path | None = None) -> "Figure":
    """One value per image token laid over the image's patch grid: a query's attention, or the lens probability.

    Args:
        trace: A Trace whose image span has a patch grid (LLaVA-1.5, LLaVA-NeXT, ...).
        query: The attending position for ``value="attention"`` (default as in :func:`attention`: the decision
            position).
        value: ``"attention"`` (the query's attention to each patch) or ``"lens"`` (each patch position's lens
            probability of ``target``, or of its own top-1 token when ``target`` is None).
        layer: The layer, numbered like hidden states (attention: 1 = first block; lens: 0 = decoder input);
            negative counts from the last.
        heads: For attention: ``"mean"``, a head, or a list of heads.
        target: For the lens: a word or token id.
        image: The picture to draw under the grid (path or PIL image); default the traced image when its path is
            recorded in ``trace.meta``; without one the grid is drawn alone.
        image_index: Which image of the prompt.
        crop: How the base grid covers the picture: ``"center"`` (a centre square: LLaVA-1.5's CLIP processor),
            ``"none"`` (the whole picture, squeezed: LLaVA-NeXT's base view) or ``"auto"`` (by family).
        alpha: Opacity of the overlay where the value is highest; it falls to transparent at the bottom of the
            scale, so the picture stays visible where little attention goes.
        cmap: Colormap (default: the attention convention of every figure, light = little, dark = much).
        scale: Colour scale; default ``"sqrt"`` for attention (as :func:`attention`), ``"linear"`` for the lens.
        lens: For ``value="lens"``: None for the logit lens, or a lens of the trace's model (e.g. a tuned lens).
        path: Also save the figure there.

    Returns:
        The Figure, one panel per block of the image's layout (``"base"``, and ``"crops"`` for anyres families),
        each Axes labelled ``"patch:<block>"``; all panels share one colour scale.

    Example:
        >>> fig = patch_overlay(t, value="lens", target="blurry", layer=12)      # doctest: +SKIP
    """
    grids, title = patch_data(trace, query, value=value, layer=layer, heads=heads, target=target,
                              image_index=image_index, lens=lens)
    picture = _picture(trace, image, image_index)
    crop = ("center" if trace.meta.get("family") == "llava" else "none") if crop == "auto" else crop
    scale = scale or ("sqrt" if value == "attention" else "linear")
    with style():
        fig = new_figure(1.0 + 3.2 * len(grids), 3.6)
        axes = fig.subplots(1, len(grids), squeeze=False)[0]
        top = max(float(np.nanmax(g)) for _, g in grids)
        mappable = draw_patch_grids(list(axes), grids, picture, norm=norm_for(scale, top), cmap=cmap,
                                    alpha=alpha, crop=crop)
        fig.suptitle(title)
        what = "attention" if value == "attention" else "lens probability"
        fig.colorbar(mappable, ax=list(axes), shrink=0.85, label=attention_label(scale, what))
        if picture is None:
            fig.text(0.01, 0.01, f"no picture under the grid: {picture_note(trace, image_index)}", fontsize=6.5,
                     color="#555555", gid="note:no-picture")
    if path is not None:
        save(fig, path)
    return fig


def patch_data(trace: "Trace", query: int | None = None, *, value: str = "attention", layer: int = -1,
               heads="mean", target=None, image_index: int = 0,
               lens: "Lens | None" = None) -> tuple[list[tuple[str, np.ndarray]], str]:
    """The ``[(block, [rows, cols])]`` grids and a title that :func:`patch_overlay` draws."""
    from ..core.errors import VlmLensError

    n = len(trace.tokens)
    if value == "attention":
        numbers = trace.attention_blocks if trace.attention is not None else []
        chosen = numbers[layer] if numbers and -len(numbers) <= layer < 0 else layer
        matrix, _, position = trace_data.attention_matrix(trace, query, heads, [chosen])
        row = np.zeros(n)
        row[: matrix.shape[1]] = matrix[0]
        title = f"attention of the {trace_data.reading(trace).describe(trace, position)}\nlayer {chosen}"
    elif value == "lens":
        kept = list(trace.layers)
        chosen = kept[layer] if -len(kept) <= layer < 0 else layer
        spans = trace.image_spans
        if not 0 <= image_index < len(spans):
            raise VlmLensError(f"image_index={image_index}: this trace has {len(spans)} image(s).")
        span = spans[image_index]
        positions = list(range(span.start, span.stop))
        if target is None:
            table, what = trace.lens(topk=1, positions=positions, layers=[chosen], lens=lens), "p(top-1)"
        else:
            table = trace.lens_targets([target], positions=positions, layers=[chosen], lens=lens)
            what = f"p({target!r})"
        row = np.zeros(n)
        row[table["pos"].to_numpy()] = table["prob"].to_numpy()
        title = f"{trace_data.lens_name(lens)} {what} of each image token\nlayer {chosen}"
    else:
        raise VlmLensError(f"value={value!r}: expected 'attention' or 'lens'.")
    return trace_data.patch_grids(trace, row, image_index), title


def draw_patch_grids(axes: Sequence["Axes"], grids: Sequence[tuple[str, np.ndarray]], picture: Any, *,
                     norm: "Normalize", cmap: str = ATTENTION_CMAP, alpha: float = 0.75, crop: str = "none"):
    """Draw each ``(name, [rows, cols])`` grid on its Axes, over ``picture`` when given (the colours fading to
    transparent at the bottom of the scale, up to opacity ``alpha`` at the top); the first block's view is the centre
    square of the picture when ``crop="center"``. Returns the last image artist (for a colour bar)."""
    mappable = None
    for ax, (name, grid) in zip(axes, grids):
        rows, cols = grid.shape
        extent = (0, cols, rows, 0)
        if picture is not None:
            view = _center_square(picture) if crop == "center" and name == grids[0][0] else picture
            ax.imshow(np.asarray(view), extent=extent, interpolation="bilinear")
        mappable = ax.imshow(grid, extent=extent, cmap=overlay_cmap(cmap, alpha) if picture is not None else cmap,
                             norm=norm, interpolation="nearest")
        ax.set_xticks(range(0, cols + 1, max(1, cols // 6)))
        ax.set_yticks(range(0, rows + 1, max(1, rows // 6)))
        ax.set_title(f"{name}: {rows} x {cols} patches")
        ax.set_label(f"patch:{name}")
    return mappable


def picture_note(trace: "Trace", index: int = 0) -> str:
    """Why the picture of image ``index`` cannot be shown from the trace alone, and what to do."""
    recorded = trace.meta.get("images") or []
    if index >= len(recorded):
        return "the trace records no image; pass image= (a path or a PIL image)"
    entry = str(recorded[index])
    if Path(entry).is_file():
        return ""
    if entry.isidentifier():  # a type name: the image was given as an object, not a file
        return (f"the image was given in memory ({entry}), so the trace records no file to read it from; pass "
                "image= (the same picture) to show it")
    return f"the traced file {entry!r} no longer exists; pass image= to show the picture"


def _picture(trace: "Trace", image: Any, index: int):
    from ..core.images import load_image

    if image is not None:
        return load_image(image)
    recorded = trace.meta.get("images") or []
    if index < len(recorded) and Path(str(recorded[index])).is_file():
        try:
            return load_image(recorded[index])
        except Exception:  # the file changed since the trace; the grid alone is still useful
            return None
    return None


def _center_square(picture):
    w, h = picture.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return picture.crop((left, top, left + side, top + side))


def _rgb(color: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return to_rgb(color)
