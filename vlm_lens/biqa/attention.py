"""Attention rows -> where a token looks: mass by segment, profile over image tokens, map over the patch grid.

Why: the paper asks whether the level word is decided by looking at the image, at the instruction, or at the
model's own description. A trace keeps exact attention rows ``[layer, head, query, key]``; this module sums them
over the segments of :mod:`vlm_lens.biqa.answer`
(``system, image, instruction, description, answer``) and over image-token indices, for one trace or, through
:class:`Attention`, averaged over a dataset whose samples have different lengths.

Which query row. ``query="decision"`` (the default) is the decision position, whose logits decide the level word
(the position before a generated level word, or the last prompt position of a prefilled Q-Align answer);
``"level"`` the generated level word's own position (falling back to the decision position when nothing was
generated); ``"last"`` the last position; an integer a sequence position. Samples without such a position (no
level found) are counted and left out.

In every table ``layer`` is the decoder block, numbered like the hidden state it produces: 1 = the first block
(``Trace.attention_blocks``, i.e. ``Trace.attention_layers[i] + 1``), so attention and logit-lens tables of the same
layer line up.

Averages are means over samples: segment mass per (layer, head, segment) is summed per sample and divided by
the number of samples used; a sample without a description contributes 0 to "description" (it gave it no mass).
The image profile is indexed by image-token position inside the first image's span (0 = its first token) and
divided by the number of samples that have that index (image spans of LLaVA-NeXT differ in length); the patch map
uses the base grid block and is averaged per grid shape.

Example:
    >>> attention_mass(t, by="segment", query="last").groupby("segment").mass.mean()   # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..core.checks import as_bool, as_int, as_text, as_words
from ..core.errors import VlmLensError
from ..runs.reducers import Reducer, TraceRequest, accumulate
from ..runs.stats import mean_interval
from .answer import AnswerLayout, locate, query_index, segment_labels
from .quality import check_question
from .vocabulary import ANSWER_PREFIX, ATTENTION_QUERIES, BIQA_SEGMENTS, LEVELS, QALIGN_PROMPT

if TYPE_CHECKING:
    from ..runs.datasets import Sample
    from ..tracing.record import Trace

__all__ = ["Attention", "attention_mass", "image_profile", "mass_by_segment", "patch_map", "query_position",
           "segment_mass"]


def query_position(trace: "Trace", layout: AnswerLayout, query: str | int) -> int | None:
    """The sequence position of the chosen query row (see the module docstring); None when there is none."""
    n = len(trace.tokens)
    if isinstance(query, (int, np.integer)) and not isinstance(query, bool):
        if not -n <= int(query) < n:
            raise VlmLensError(f"query={query}: out of range for a sequence of {n} positions.")
        return int(query) % n
    if query == "decision":
        return layout.decision_pos
    if query == "level":
        return layout.level_pos if layout.level_pos is not None else layout.decision_pos
    if query == "last":
        return n - 1
    raise VlmLensError(f"query={query!r}: expected one of {ATTENTION_QUERIES} or a sequence position.")


def _rows(trace: "Trace", position: int) -> torch.Tensor:
    """``[layer, head, key]`` attention row of ``position``."""
    if trace.attention is None:
        raise VlmLensError("this trace has no attention rows; trace with attention=True.")
    return trace.attention[:, :, query_index(trace, position)]


def mass_by_segment(rows: torch.Tensor, labels: Sequence[str],
                    segments: Sequence[str] = BIQA_SEGMENTS) -> torch.Tensor:
    """``[..., key]`` attention rows -> ``[..., segment]`` float64 mass on each of ``segments``, where key ``k`` is
    labelled ``labels[k]`` (keys past ``len(labels)`` are left out). The one sum by segment of vlm_lens: the
    per-trace tables, the dataset reducer and the figures all go through it.

    Example:
        >>> mass_by_segment(torch.tensor([0.5, 0.25, 0.25]), ["image", "image", "answer"]).tolist()
        [0.0, 0.75, 0.0, 0.0, 0.25]
    """
    rows = rows[..., :len(labels)].double()
    unknown = sorted(set(labels) - set(segments))
    if unknown:
        raise VlmLensError(f"segment labels {unknown} are not among {list(segments)}.")
    index = torch.tensor([list(segments).index(s) for s in labels[:rows.shape[-1]]], dtype=torch.long)
    # index_add, not a matmul with a one-hot matrix: a small float64 matmul goes through the threaded BLAS, whose
    # thread start-up costs more than the sum itself (milliseconds per sample on a busy machine)
    return rows.new_zeros(*rows.shape[:-1], len(segments)).index_add_(-1, index, rows)


def segment_mass(trace: "Trace", position: int, labels: Sequence[str]) -> torch.Tensor:
    """``[layer, head, segment]`` float64 attention mass of ``position`` on each of :data:`BIQA_SEGMENTS`."""
    return mass_by_segment(_rows(trace, position), labels)


def image_profile(trace: "Trace", position: int, image: str = "image") -> torch.Tensor | None:
    """``[layer, head, image_token]`` attention of ``position`` on the tokens of image span ``image``."""
    span = trace.spans.get(image)
    return None if span is None else _rows(trace, position)[..., span.slice].double()


def patch_map(trace: "Trace", position: int, image: str = "image") -> torch.Tensor | None:
    """``[layer, head, rows, cols]`` attention on the base patch grid of image span ``image``; None if not spatial."""
    span = trace.spans.get(image)
    if span is None or not span.layout:
        return None
    block = span.layout[0]
    width = block.cols + int(block.newline)
    first = span.start + block.offset
    rows = _rows(trace, position)[..., first:first + block.rows * width]  # views only: no index tensors
    return rows.reshape(*rows.shape[:2], block.rows, width)[..., :block.cols].double()


def attention_mass(trace: "Trace", by: str = "segment", *, query: str | int | None = None,
                   levels: Sequence[str] = LEVELS, answer_prefix: str | None = ANSWER_PREFIX,
                   tokenizer: Any = None) -> pd.DataFrame:
    """Attention mass of query rows summed by segment.

    Args:
        by: ``"segment"`` (the segments of :mod:`vlm_lens.biqa.answer`).
        query: One query (see :func:`query_position`); None for every query position the trace kept.

    Returns:
        DataFrame with columns ``layer`` (decoder block, 1-based), ``head, query`` (sequence position),
        ``segment, mass``.

    Example:
        >>> attention_mass(t, query="decision").pivot_table("mass", "layer", "segment")  # doctest: +SKIP
    """
    if by != "segment":
        raise VlmLensError(f"by={by!r}: only 'segment' is supported.")
    layout = locate(trace, levels, answer_prefix, tokenizer=tokenizer)
    labels = segment_labels(trace, layout)
    positions = trace.query_positions.tolist() if query is None else [query_position(trace, layout, query)]
    frames = []
    for position in positions:
        if position is None:
            raise VlmLensError(f"query={query!r}: this trace has no such position ({layout.reason}).")
        mass = segment_mass(trace, position, labels)
        n_layer, n_head, n_seg = mass.shape
        frames.append(pd.DataFrame({
            "layer": np.repeat(trace.attention_blocks, n_head * n_seg),
            "head": np.tile(np.repeat(np.arange(n_head), n_seg), n_layer),
            "query": position, "segment": list(BIQA_SEGMENTS) * (n_layer * n_head), "mass": mass.reshape(-1).numpy()}))
    return pd.concat(frames, ignore_index=True)


class Attention(Reducer):
    """Dataset-level attention of one query token: by segment, over image-token index, over the patch grid.

    Args:
        query: Which row (see :func:`query_position`); default the decision position.
        prompt, answer_prefix, prefill, generate: What is asked and generated (as
            :class:`~vlm_lens.biqa.quality.Quality`; ``prefill=False, generate=0`` is refused).
        levels: The level words (to find the level and the answer).

    Tables: ``segments`` (``layer, head, segment, mass, n``: mean over samples), ``layers`` (``layer, segment,
    mass, low, high, n``: per layer and segment the mean over samples of the head-averaged mass with its 95%
    Student-t interval: image against description per layer), ``image_profile`` (``layer, head, token, mass,
    n``), ``grid`` (``grid`` "RxC", ``layer, head, row, col, mass, n``), ``samples`` (``index, id, query_pos,
    layer, segment, mass``: per sample, mean over heads), ``summary`` (``query, n_samples, n_used, n_no_query``).
    ``layer`` is the decoder block, 1-based.

    Two readings in one run (the decision position and the level word, say) are two analyses with their own
    table prefixes: ``[Attention(), Attention(query="level").named("attention_level")]``.

    Example:
        >>> vl.run(m, ds, [Attention(query="level")], out="runs/att")["attention.segments"]   # doctest: +SKIP
    """

    name = "attention"
    tables = ("samples",)

    def __init__(self, query: str | int = "decision", *, prompt: str = QALIGN_PROMPT,
                 answer_prefix: str | None = ANSWER_PREFIX, prefill: bool = True, generate: int = 0,
                 levels: Sequence[str] = LEVELS) -> None:
        super().__init__()
        if not (query in ATTENTION_QUERIES or (isinstance(query, int) and not isinstance(query, bool))):
            raise VlmLensError(f"query={query!r}: expected one of {ATTENTION_QUERIES} or a sequence position.")
        self.query, self.prompt = query, as_text(prompt, "prompt", optional=False)
        self.answer_prefix, self.prefill = as_text(answer_prefix, "answer_prefix"), as_bool(prefill, "prefill")
        self.generate, self.levels = as_int(generate, "generate", minimum=0), as_words(levels, "levels")
        if query in ("decision", "level"):
            check_question(self.prefill, self.generate)

    def config(self) -> dict[str, Any]:
        return {"query": self.query, "prompt": self.prompt, "answer_prefix": self.answer_prefix,
                "prefill": self.prefill, "generate": self.generate, "levels": self.levels}

    def request(self) -> TraceRequest:
        return TraceRequest(self.prompt, self.answer_prefix if self.prefill else None, self.generate,
                            attention=True)

    def update(self, sample: "Sample", traces: list["Trace"]) -> None:
        trace = traces[0]
        accumulate(self.sums, "n_samples", torch.ones(1))
        layout = locate(trace, self.levels, self.answer_prefix)
        position = query_position(trace, layout, self.query)
        if position is None:
            accumulate(self.sums, "n_no_query", torch.ones(1))
            return
        mass = segment_mass(trace, position, segment_labels(trace, layout))
        accumulate(self.sums, "segments", mass)
        accumulate(self.sums, "n_used", torch.ones(1))
        profile = image_profile(trace, position)
        if profile is not None:
            accumulate(self.sums, "profile", profile)
            accumulate(self.sums, "profile_n", torch.ones(profile.shape[-1]))
        grid = patch_map(trace, position)
        if grid is not None:
            key = f"{grid.shape[-2]}x{grid.shape[-1]}"
            accumulate(self.sums, f"grid/{key}", grid)
            accumulate(self.sums, f"grid_n/{key}", torch.ones(1))
        per_layer = mass.mean(1)  # [layer, segment], mean over heads
        for i, layer in enumerate(trace.attention_blocks):
            for j, segment in enumerate(BIQA_SEGMENTS):
                self.emit("samples", {"index": sample.index, "id": sample.id, "query_pos": position, "layer": layer,
                                      "segment": segment, "mass": float(per_layer[i, j])})

    def result(self, rows: dict[str, pd.DataFrame] | None = None, *,
               higher_is_better: bool = True) -> dict[str, pd.DataFrame]:
        frames = self.frames(rows)
        count = lambda key: int(self.sums[key].item()) if key in self.sums else 0  # noqa: E731
        used = count("n_used")
        summary = pd.DataFrame([{"query": str(self.query), "n_samples": count("n_samples"), "n_used": used,
                                 "n_no_query": count("n_no_query")}])
        segments = pd.DataFrame(columns=["layer", "head", "segment", "mass", "n"])
        profile = pd.DataFrame(columns=["layer", "head", "token", "mass", "n"])
        if used:
            mean = self.sums["segments"] / used  # [layer, head, segment]
            layers = sorted(frames["samples"]["layer"].unique().tolist()) if len(frames["samples"]) else \
                list(range(1, mean.shape[0] + 1))
            axes = {"layer": layers, "head": range(mean.shape[1]), "segment": BIQA_SEGMENTS}
            segments = _long(mean, axes).assign(n=used)
            if "profile" in self.sums:
                n = self.sums["profile_n"]
                table = _long(self.sums["profile"] / n, {"layer": layers, "head": range(mean.shape[1]),
                                                         "token": range(len(n))})
                profile = table.assign(n=np.tile(n.numpy().astype(int), len(layers) * mean.shape[1]))
        grids = []
        for key in sorted(k for k in self.sums if k.startswith("grid/")):
            shape = key.split("/", 1)[1]
            n = int(self.sums[f"grid_n/{shape}"].item())
            total = self.sums[key]
            grids.append(_long(total / n, {"layer": layers, "head": range(total.shape[1]), "row": range(total.shape[2]),
                                           "col": range(total.shape[3])}).assign(grid=shape, n=n))
        grid = (pd.concat(grids, ignore_index=True)[["grid", "layer", "head", "row", "col", "mass", "n"]] if grids
                else pd.DataFrame(columns=["grid", "layer", "head", "row", "col", "mass", "n"]))
        return {**frames, "segments": segments, "layers": _layer_means(frames["samples"]), "image_profile": profile,
                "grid": grid, "summary": summary}


def _layer_means(samples: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, segment): the mean over samples of the head-averaged mass, its Student-t interval, ``n``."""
    rows = []
    if len(samples):
        order = {s: k for k, s in enumerate(BIQA_SEGMENTS)}
        for (layer, segment), group in samples.groupby(["layer", "segment"], sort=True):
            mean, low, high = mean_interval(group["mass"].to_numpy(float))
            rows.append({"layer": int(layer), "segment": segment, "mass": mean, "low": low, "high": high,
                         "n": len(group), "_order": order.get(segment, len(order))})
    if not rows:
        return pd.DataFrame(columns=["layer", "segment", "mass", "low", "high", "n"])
    return pd.DataFrame(rows).sort_values(["layer", "_order"], kind="stable").drop(columns="_order") \
        .reset_index(drop=True)


def _long(tensor: torch.Tensor, axes: dict[str, Sequence[Any]]) -> pd.DataFrame:
    """A tensor as a long table: one column per axis (in order) and ``mass``."""
    index = pd.MultiIndex.from_product([list(v) for v in axes.values()], names=list(axes))
    return pd.DataFrame({"mass": tensor.reshape(-1).numpy()}, index=index).reset_index()
