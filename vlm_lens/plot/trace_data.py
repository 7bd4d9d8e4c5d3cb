"""Reading a Trace into the small tables and matrices the figures draw.

This is the only part of :mod:`vlm_lens.plot` that touches a :class:`~vlm_lens.Trace`, and it only calls its
public readers (``tokens``, ``spans``, ``attention``, ``lens``, ``lens_targets``): the numbers in a figure are the
numbers a user gets from the Trace. The drawing modules take what is returned here (or the same structures built
from a dataset run) and never see a model.

Layer numbering is the one of ``Trace.layers`` everywhere: hidden index ``l`` is the output of decoder block ``l``
(0 = the decoder input). Attention rows are numbered by ``Trace.attention_blocks`` (decoder block ``l + 1`` for
the 0-based ``Trace.attention_layers[i] = l``), the block whose output is hidden index ``l + 1``, so that one layer
number means one block in every figure.

Positions and segments are read the BIQA way (:mod:`vlm_lens.plot.reading`): by default the decision position,
and tokens labelled system / image / instruction / description / answer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import torch

from ..biqa.attention import mass_by_segment
from ..biqa.vocabulary import BIQA_SEGMENTS
from ..core.errors import VlmLensError
from ..core.spans import SEGMENTS
from .reading import reading
from .style import token_label

if TYPE_CHECKING:
    from ..tracing.lens import Lens
    from ..tracing.record import Trace

IMAGE_MODES = ("collapse", "band", "full", "hide")
#: Segments in display order: the BIQA scheme, then the trace's own ``response`` (tables built from
#: ``Trace.tokens`` carry it).
SEGMENT_ORDER = (*BIQA_SEGMENTS, *(s for s in SEGMENTS if s not in BIQA_SEGMENTS))
#: Positions shown after the decision position by the default latent-output window (the level word, its full
#: stop, the end of the answer).
AFTER_DECISION = 3


@dataclass(frozen=True)
class Column:
    """One drawn column: a single position, or a run of image positions shown together."""

    positions: tuple[int, ...]
    label: str
    segment: str
    width: float = 1.0
    text: bool = True  # whether a token is written into its cells


@dataclass
class Grid:
    """Values to draw as a layers x columns heatmap.

    Attributes:
        values: ``[layer, column]`` colour values.
        layers: Layer number of each row.
        columns: What each column stands for.
        words: ``[layer][column]`` text written into the cells (empty strings: none).
        label: What the colour means (colour-bar label).
        note: What was left out to stay legible (empty when nothing).
    """

    values: np.ndarray
    layers: list[int]
    columns: list[Column]
    words: list[list[str]] = field(default_factory=list)
    label: str = ""
    note: str = ""


# ------------------------------------------------------------------------------------------------- positions
def resolve(trace: "Trace", position: int, name: str = "position") -> int:
    n = len(trace.tokens)
    if isinstance(position, bool) or not isinstance(position, (int, np.integer)) or not -n <= position < n:
        raise VlmLensError(f"{name}={position!r}: expected a position in {-n}..{n - 1} (negative counts from "
                           "the end).")
    return int(position) % n


def default_position(trace: "Trace") -> int:
    """The decision position (where the level is decided), or the last prompt position without one."""
    return reading(trace).position


def select_positions(trace: "Trace", positions: Sequence[int] | str | None, context: int) -> list[int]:
    """Positions named by a list, ``"decision"`` (the kept positions up to :data:`AFTER_DECISION` after the
    decision position; a figure windows them), a segment name (``"response"``, ``"instruction"``,
    ``"description"``, ``"answer"``, ...; ``"all"``), or None (every position whose hidden state was kept);
    ``context`` adds that many positions before a segment."""
    kept = sorted(int(p) for p in trace.positions.tolist())
    if positions is None or (isinstance(positions, str) and positions == "all"):
        return kept
    if isinstance(positions, str) and positions == "decision":
        stop = reading(trace).position + AFTER_DECISION
        return [p for p in kept if p <= stop]
    if isinstance(positions, str):
        named = (*SEGMENTS, "description", "answer")
        if positions not in named:
            raise VlmLensError(f"positions={positions!r}: expected a list of positions, None, 'all', 'decision', or "
                               f"a segment ({', '.join(named)}).")
        segments = trace.tokens["segment"].tolist() if positions in SEGMENTS else reading(trace).labels
        where = [p for p in kept if segments[p] == positions]
        if not where:
            raise VlmLensError(f"positions={positions!r}: this trace has no {positions} positions (it has "
                               f"{', '.join(sorted(set(segments)))}).")
        first = where[0]
        return [p for p in kept if first - context <= p < first] + where
    return sorted(dict.fromkeys(resolve(trace, p, "positions") for p in positions))


def build_columns(trace: "Trace", positions: list[int], image: str, band_bins: int = 24,
                  band_width: float = 4.0) -> list[Column]:
    """Group ``positions`` of a trace into drawn columns, labelled with the BIQA segments; image positions per
    ``image`` (see :data:`IMAGE_MODES`)."""
    span_of = {p: k for k, span in enumerate(trace.image_spans) for p in range(span.start, span.stop)}
    return columns_from_labels(trace.tokens["text"].tolist(), reading(trace).labels, positions, image,
                               images=[span_of.get(p) for p in range(len(trace.tokens))], band_bins=band_bins,
                               band_width=band_width)


def columns_from_labels(texts: Sequence[str], segments: Sequence[str], positions: Sequence[int], image: str, *,
                        images: Sequence[int | None] | None = None, band_bins: int = 24,
                        band_width: float = 4.0) -> list[Column]:
    """Columns from per-position token texts and segments (what a dataset run has without a Trace).

    ``images[p]`` says which image position ``p`` belongs to, so that two adjacent images stay two columns; by
    default every run of consecutive image positions is one image.
    """
    if image not in IMAGE_MODES:
        raise VlmLensError(f"image_tokens={image!r}: expected one of {', '.join(IMAGE_MODES)}.")
    columns: list[Column] = []
    run: list[int] = []

    def flush() -> None:
        if not run:
            return
        n = len(run)
        if image == "collapse":
            columns.append(Column(tuple(run), f"<image ×{n}>", "image"))
        elif image == "band":
            bins = np.array_split(np.array(run), min(n, band_bins))
            for b in bins:
                columns.append(Column(tuple(int(p) for p in b), f"image ({n})", "image",
                                      width=band_width / len(bins), text=False))
        run.clear()

    for p in positions:
        if segments[p] == "image" and image != "full":
            same = (images is None or images[p] == images[run[-1]]) if run else True
            if run and (p != run[-1] + 1 or not same):
                flush()
            if image != "hide":
                run.append(p)
            continue
        flush()
        columns.append(Column((p,), token_label(texts[p]), segments[p]))
    flush()
    return columns


def bin_columns(columns: list[Column], max_columns: int) -> tuple[list[Column], str]:
    """Merge runs of single-position columns of one segment into bins until at most ``max_columns`` remain
    (bands count as one): for figures that must show the whole context, such as an attention row."""
    units = _units(columns)
    singles = sum(1 for u in units if len(u) == 1 and len(u[0].positions) == 1)
    if len(units) <= max_columns or singles == 0:
        return columns, ""
    size = -(-singles // max(max_columns - (len(units) - singles), 1))
    out: list[Column] = []
    group: list[Column] = []

    def flush() -> None:
        if group:
            first, last = group[0].positions[0], group[-1].positions[-1]
            label = group[0].label if len(group) == 1 else f"{first}–{last}"
            out.append(Column(tuple(p for c in group for p in c.positions), label, group[0].segment))
            group.clear()

    for c in columns:
        if len(c.positions) == 1 and c.text and (not group or (group[-1].segment == c.segment and len(group) < size)):
            group.append(c)
            continue
        flush()
        if len(c.positions) == 1 and c.text:
            group.append(c)
        else:
            out.append(c)
    flush()
    return out, f"keys in bins of up to {size} positions (summed) to stay legible"


def column_ticks(columns: Sequence[Column], edges: np.ndarray) -> tuple[list[float], list[str], list[str]]:
    """One x tick per column, and one per band (at its middle): ``(positions, labels, segments)``."""
    ticks, labels, segments, start = [], [], [], 0
    for unit in _units(list(columns)):
        stop = start + len(unit)
        ticks.append(float(edges[start] + edges[stop]) / 2)
        labels.append(unit[0].label)
        segments.append(unit[0].segment)
        start = stop
    return ticks, labels, segments


def _units(columns: list[Column]) -> list[list[Column]]:
    units: list[list[Column]] = []
    for c in columns:
        if units and not c.text and not units[-1][-1].text and c.label == units[-1][-1].label:
            units[-1].append(c)
        else:
            units.append([c])
    return units


def window(columns: list[Column], max_columns: int) -> tuple[list[Column], str]:
    """The last ``max_columns`` columns (band columns count as one together), and a note when some were cut."""
    units = _units(columns)
    if len(units) <= max_columns:
        return columns, ""
    kept = units[-max_columns:]
    first = kept[0][0].positions[0]
    return [c for u in kept for c in u], (f"showing the last {max_columns} of {len(units)} columns (from position "
                                          f"{first}); pass positions= to choose others")


def decision_window(columns: list[Column], max_columns: int, words: str) -> tuple[list[Column], str]:
    """The ``max_columns`` columns ending just after the decision position, and a note naming them."""
    kept, _ = window(columns, max_columns)
    first, last = kept[0].positions[0], kept[-1].positions[-1]
    return kept, f"positions {first}–{last}, around the {words}; positions=None shows all"


# ------------------------------------------------------------------------------------------------------- lens
def lens_layers(trace: "Trace", layers: Sequence[int] | None, layer_range: tuple[int, int] | None = None,
                most: int | None = None) -> list[int]:
    """Hidden-state indices to draw: ``layers`` (negative ones count from the last kept layer), the kept layers
    inside ``layer_range`` (inclusive), or all kept layers (every n-th and the last when more than ``most``)."""
    if layers is not None and layer_range is not None:
        raise VlmLensError("pass either layers= or layer_range=, not both.")
    kept = list(trace.layers)
    if layer_range is not None:
        lo, hi = layer_range
        chosen = [l for l in kept if lo <= l <= hi]
        if not chosen:
            raise VlmLensError(f"layer_range={tuple(layer_range)}: no kept layer inside (kept: {kept[0]}..{kept[-1]}).")
        return chosen
    if layers is not None:
        bad = [l for l in layers if isinstance(l, bool) or not isinstance(l, (int, np.integer)) or l < -len(kept)]
        if bad or not len(layers):
            raise VlmLensError(f"layers={list(layers)!r}: expected hidden-state indices (kept: {kept[0]}..{kept[-1]}; "
                               "negative ones count from the last).")
        return [kept[l] if l < 0 else int(l) for l in layers]
    if most is not None and len(kept) > most:
        step = -(-len(kept) // most)
        return sorted(set(kept[::step]) | {kept[-1]})
    return kept


def latent_grid(trace: "Trace", positions: list[int], columns: list[Column], layers: list[int],
                color: str | int, lens: "Lens | None" = None) -> Grid:
    """Top-1 lens token per (layer, column), coloured by ``color``: ``"top1"``, ``"final"`` or a target word; read
    through the logit lens or ``lens``."""
    wanted = sorted({p for c in columns for p in c.positions})
    top = trace.lens(topk=1, positions=wanted, layers=layers, lens=lens)
    words = top.pivot(index="layer", columns="pos", values="token").loc[layers, wanted]
    if color == "top1":
        probs, label = top.pivot(index="layer", columns="pos", values="prob").loc[layers, wanted], "p(top-1 token)"
    elif color == "final":
        last = max(trace.layers)
        final = trace.lens(topk=1, positions=wanted, layers=[last], lens=lens).set_index("pos")["token_id"]
        parts = []
        for token_id, group in final.groupby(final):
            table = trace.lens_targets([int(token_id)], positions=group.index.tolist(), layers=layers, lens=lens)
            parts.append(table)
        probs = pd.concat(parts).pivot(index="layer", columns="pos", values="prob").loc[layers, wanted]
        label = f"p(final token) (top-1 of layer {last})"
    else:
        table = trace.lens_targets([color], positions=wanted, layers=layers, lens=lens)
        probs, label = table.pivot(index="layer", columns="pos", values="prob").loc[layers, wanted], f"p({color!r})"
    values = np.zeros((len(layers), len(columns)))
    cells = [["" for _ in columns] for _ in layers]
    for j, c in enumerate(columns):
        cols = list(c.positions)
        values[:, j] = probs[cols].to_numpy(dtype=float).mean(axis=1)
        if c.text:
            for i in range(len(layers)):
                texts = words.iloc[i][cols].tolist()
                word = Counter(texts).most_common(1)[0][0] if len(cols) > 1 else texts[0]
                cells[i][j] = token_label(word)
    return Grid(values, list(layers), columns, cells, label)


def topk_table(trace: "Trace", position: int, k: int, layers: list[int],
               lens: "Lens | None" = None) -> tuple[pd.DataFrame, int, str]:
    """The lens top-``k`` at ``position`` for ``layers``, and the id and text of the model's final output token
    there (the top-1 of the last kept layer: the model's own output when every layer was kept)."""
    table = trace.lens(topk=k, positions=[position], layers=layers, lens=lens)
    final = trace.lens(topk=1, positions=[position], layers=[max(trace.layers)], lens=lens)
    return table, int(final["token_id"].iloc[0]), str(final["token"].iloc[0])


def targets_table(trace: "Trace", words: Sequence[str | int], position: int, layers: list[int],
                  lens: "Lens | None" = None) -> pd.DataFrame:
    return trace.lens_targets(list(words), positions=[position], layers=layers, lens=lens)


def lens_name(lens: "Lens | None") -> str:
    """What a figure calls the lens it was read through: ``"logit lens"`` (None) or the lens's name."""
    return "logit lens" if lens is None else str(getattr(lens, "name", "lens"))


# -------------------------------------------------------------------------------------------------- attention
def query_index(trace: "Trace", query: int | None) -> tuple[int, int]:
    """``(position, row)``: the query position and its index in ``Trace.query_positions``."""
    if trace.attention is None:
        raise VlmLensError("this trace holds no attention rows; trace with attention=True (the default).")
    queries = trace.query_positions.tolist()
    position = default_position(trace) if query is None else resolve(trace, query, "query")
    if position not in queries:
        if query is None:
            position = queries[-1]
        else:
            raise VlmLensError(f"query={query!r}: position {position} has no attention row; this trace kept rows of "
                               f"positions {queries} (trace with query_positions=[...] to choose others).")
    return position, queries.index(position)


def attention_matrix(trace: "Trace", query: int | None, heads: str | int | Sequence[int],
                     layers: Sequence[int] | None) -> tuple[np.ndarray, list[int], int]:
    """``([layer, key], layer numbers, query position)``: the query's attention over keys ``0..query``."""
    position, row = query_index(trace, query)
    attention = trace.attention[:, :, row, : position + 1].float()  # [layer, head, key]; later keys are masked
    n_heads = attention.shape[1]
    if isinstance(heads, str):
        if heads != "mean":
            raise VlmLensError(f"heads={heads!r}: expected 'mean', a head index or a list of head indices.")
        chosen = list(range(n_heads))
    else:
        chosen = [heads] if isinstance(heads, (int, np.integer)) else list(heads)
        bad = [h for h in chosen if not -n_heads <= h < n_heads]
        if bad or not chosen:
            raise VlmLensError(f"heads={heads!r}: expected head indices in 0..{n_heads - 1}.")
    matrix = attention[:, chosen].mean(1).numpy()
    numbers = trace.attention_blocks
    if layers is not None:
        missing = [l for l in layers if l not in numbers]
        if missing:
            raise VlmLensError(f"layers={list(layers)}: no attention rows for layers {missing} (this trace has "
                               f"layers {numbers[0]}..{numbers[-1]}, numbered like hidden states: 1 = first block).")
        matrix = matrix[[numbers.index(l) for l in layers]]
        numbers = list(layers)
    return matrix, numbers, position


def segment_mass(matrix: np.ndarray, segments: Sequence[str], layers: Sequence[int]) -> pd.DataFrame:
    """Attention mass per segment: DataFrame ``layer, segment, mass`` from a ``[layer, key]`` matrix (the segments
    present, in the order of :data:`SEGMENT_ORDER`)."""
    labels = list(segments)[: matrix.shape[1]]
    present = [s for s in SEGMENT_ORDER if s in set(labels)]
    mass = mass_by_segment(torch.from_numpy(np.asarray(matrix)), labels, present).numpy()
    rows = [{"layer": l, "segment": segment, "mass": float(mass[i, j])}
            for j, segment in enumerate(present) for i, l in enumerate(layers)]
    return pd.DataFrame(rows, columns=["layer", "segment", "mass"])


# ------------------------------------------------------------------------------------------------ patch grids
def patch_grids(trace: "Trace", values: np.ndarray, image_index: int) -> list[tuple[str, np.ndarray]]:
    """Lay the values of one image's positions (``values[p]`` for sequence position ``p``) onto its patch grids:
    one ``[rows, cols]`` array per block of the image span's layout (newline tokens dropped)."""
    spans = trace.image_spans
    if not spans:
        raise VlmLensError("this trace has no image positions to overlay.")
    if not 0 <= image_index < len(spans):
        raise VlmLensError(f"image={image_index}: this trace has {len(spans)} image(s) (0..{len(spans) - 1}).")
    span = spans[image_index]
    if not span.layout:
        family = trace.meta.get("family", "this family")
        raise VlmLensError(f"image {image_index} has no patch grid: the image tokens of {family} are not spatial "
                           "(e.g. learned queries), so they cannot be laid over the image.")
    grids = []
    for block in span.layout:
        stride = block.cols + int(block.newline)
        index = [span.start + block.offset + r * stride + c for r in range(block.rows) for c in range(block.cols)]
        grids.append((block.name, values[index].reshape(block.rows, block.cols)))
    return grids
