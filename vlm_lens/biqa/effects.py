"""Effects of interventions on the level over a dataset: what the decision *depends on*, not only where it looks.

Why: attention by segment (:mod:`vlm_lens.biqa.attention`) says where the decision position looks; the paper's
claim — a two-stage model infers the level from its own description, a one-stage model from the image — is causal.
:class:`KnockoutEffects` cuts the decision position's attention to one segment in a window of decoder layers and
measures how far the level moves; :class:`~vlm_lens.biqa.patching.PatchingEffects` swaps in another checkpoint's
residual stream, layer by layer.

How, per batch of samples: the answer is generated once (the run's shared traced forward); then every
(sample, segment, layer window) is one teacher-forced pass over that same answer with one knockout, many of them
per batched forward (:func:`sweep`). The text stays the model's own, so only the intervention differs. Each pass
is read at the decision position (:func:`~vlm_lens.biqa.positions.decision_position`):

- ``d_score``: Q-Align score (softmax over the level words, weights 5..1) after minus before, and ``abs_d_score``
  its size (how far the score moved, whichever way); changes below :data:`NOISE` (float32 rounding) are 0;
- ``d_logp``: log-probability (whole vocabulary) of the chosen level word after minus before — the level word
  with the largest logit before (the generated one, for greedy answers);
- ``flipped``: whether the level word with the largest logit changed.

A knockout of the decision position's attention removes the *direct* path only: description and instruction
positions that read the image still carry it. A window that covers every layer measures the whole direct path.

Example:
    >>> r = vl.run(m, ds, [vl.analyses.KnockoutEffects(window=2)], out="runs/ko")   # doctest: +SKIP
    >>> r["knockout.effects"].pivot(index="segment", columns="window", values="d_score")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..core.errors import VlmLensError
from ..runs.reducers import Reducer, TraceRequest, accumulate
from ..runs.stats import wilcoxon
from ..tracing.interventions import knockout
from ..tracing.settings import Keep
from ..tracing.tracer import trace
from .answer import level_token_ids, query_index
from .positions import decision_position, positions_of
from .quality import _check_levels, weighted_score
from .vocabulary import ANSWER_PREFIX, LEVELS, QALIGN_PROMPT, WEIGHTS

if TYPE_CHECKING:
    from ..runs.datasets import Sample
    from ..tracing.loading import LensModel
    from ..tracing.record import Trace

__all__ = ["KnockoutEffects", "NOISE", "Reading", "change", "effect_summary", "read", "sweep", "windows"]

#: Default segments whose direct path to the decision is cut.
KNOCKOUT_SEGMENTS = ("image", "instruction", "description")
#: Changes of a score or log-probability smaller than this are float32 rounding between forwards of different batch
#: shapes (an intervention that changes nothing moves the score by ~1e-8), and are recorded as 0.
NOISE = 1e-6


def change(after: float, before: float) -> float:
    """``after - before``, 0 below :data:`NOISE`."""
    d = after - before
    return 0.0 if abs(d) < NOISE else d


@dataclass(frozen=True)
class Reading:
    """The level at the decision position of one pass: Q-Align score, log p of a level word, the argmax level."""

    score: float
    logp: float
    level: str


def read(logits: torch.Tensor, ids: list[int], levels: Sequence[str], weights: Sequence[float],
         chosen: str | None = None) -> Reading:
    """``[vocab]`` logits -> :class:`Reading`; ``logp`` is of ``chosen`` (default: the argmax level word)."""
    z = logits.double()
    level = levels[int(z[ids].argmax())]
    target = ids[list(levels).index(chosen if chosen is not None else level)]
    return Reading(float(weighted_score(z[ids], weights)), float(torch.log_softmax(z, -1)[target]), level)


def windows(n_layers: int, window: int | None, stride: int | None) -> list[tuple[int, ...]]:
    """Decoder-layer windows (0-based): ``window`` layers each, every ``stride`` layers, the last one ending at the
    last layer. Default: four windows covering all layers (fewer for models of fewer than four layers)."""
    size = window if window is not None else max(1, math.ceil(n_layers / 4))
    step = stride if stride is not None else size
    if not 1 <= size <= n_layers or step < 1:
        raise VlmLensError(f"window={window}, stride={stride}: expected 1 <= window <= {n_layers} (the model's "
                           "decoder layers) and stride >= 1.")
    starts = list(range(0, n_layers - size + 1, step))
    if starts[-1] + size < n_layers:
        starts.append(n_layers - size)
    return [tuple(range(s, s + size)) for s in starts]


def sweep(model: "LensModel", rows: list[tuple[Any, "Trace", list]], prompt: str, prefill: str | None,
          decisions: list[int], batch_size: int) -> list[torch.Tensor]:
    """Teacher-forced passes over given answers, each under its own interventions, ``batch_size`` rows per forward.

    Args:
        rows: ``(image, answer trace, interventions)`` per pass.
        decisions: Per row, the position whose logits to return.

    Returns:
        Per row, ``[vocab]`` float32 logits at its decision position.
    """
    out: list[torch.Tensor | None] = [None] * len(rows)
    by_offset: dict[int, list[int]] = defaultdict(list)  # rows whose decision is as far from their end share a Keep
    for k, ((_, base, _), position) in enumerate(zip(rows, decisions)):
        by_offset[len(base.tokens) - position].append(k)
    last = model.adapter.n_layers
    for offset, members in by_offset.items():
        keep = Keep(layers=[last], positions=[-1], query_positions=[-offset], attention=False)
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            traces = trace(model, [rows[k][0] for k in chunk], [prompt] * len(chunk), prefill=prefill,
                           response=[rows[k][1] for k in chunk], intervene=[rows[k][2] for k in chunk], keep=keep)
            for k, t in zip(chunk, traces):
                out[k] = t.logits[0]
    return out  # type: ignore[return-value]


class KnockoutEffects(Reducer):
    """Per sample, cut the decision position's attention to each segment in windows of decoder layers.

    Args:
        segments: Keys to knock out: segment or span names, and ``"description"``.
        window, stride: Decoder layers per window and between window starts (see :func:`windows`).
        heads: Heads to knock out (None: all).
        prompt, answer_prefix, prefill, generate: The question and how the answer comes (as
            :class:`~vlm_lens.biqa.quality.Quality`; default: a generated answer, description then level).
        levels, weights: Level words and their Q-Align weights.
        sweep_batch: Teacher-forced passes per forward.

    Tables: ``samples`` (``index, id, segment, window`` (decoder blocks, 1-based as in the attention tables, e.g.
    ``"1-2"``), ``first, last, n_keys, score_base, score, d_score, abs_d_score, logp_base, logp, d_logp,
    level_base, level, flipped``), ``effects`` (per segment and window: ``n``, mean ``d_score`` with ``low, high``
    (mean +- 1.96 s.e.) and ``p`` (Wilcoxon against no change), mean ``abs_d_score``, mean ``d_logp``,
    ``flip_rate``), ``summary`` (``n_samples, n_used,
    n_no_level`` and ``n_without_<segment>``: samples without such positions, e.g. no description).
    """

    name = "knockout"
    tables = ("samples",)
    needs_images = True

    def __init__(self, segments: Sequence[str] = KNOCKOUT_SEGMENTS, *, window: int | None = None,
                 stride: int | None = None, heads: Sequence[int] | None = None, prompt: str = QALIGN_PROMPT,
                 answer_prefix: str | None = ANSWER_PREFIX, prefill: bool = False, generate: int = 48,
                 levels: Sequence[str] = LEVELS, weights: Sequence[float] = WEIGHTS, sweep_batch: int = 64) -> None:
        super().__init__()
        _check_levels(levels, weights)
        if isinstance(segments, str) or not segments or not all(isinstance(s, str) for s in segments):
            raise VlmLensError(f"segments={segments!r}: expected a list of position names, e.g. "
                               f"{list(KNOCKOUT_SEGMENTS)}.")
        for name, value in (("window", window), ("stride", stride)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise VlmLensError(f"{name}={value!r}: expected a number of decoder layers >= 1, or None.")
        self.segments, self.window, self.stride = list(segments), window, stride
        self.heads = None if heads is None else [int(h) for h in heads]
        self.prompt, self.answer_prefix = prompt, answer_prefix
        self.prefill, self.generate = bool(prefill), int(generate)
        self.levels, self.weights, self.sweep_batch = list(levels), [float(w) for w in weights], int(sweep_batch)

    def config(self) -> dict[str, Any]:
        return {"segments": self.segments, "window": self.window, "stride": self.stride, "heads": self.heads,
                "prompt": self.prompt, "answer_prefix": self.answer_prefix, "prefill": self.prefill,
                "generate": self.generate, "levels": self.levels, "weights": self.weights,
                "sweep_batch": self.sweep_batch}

    def request(self) -> TraceRequest:
        return TraceRequest(self.prompt, self.answer_prefix if self.prefill else None, self.generate)

    def update(self, sample: "Sample", traces: list["Trace"]) -> None:
        raise VlmLensError("KnockoutEffects traces its samples again under knockouts; it needs their images: run it "
                           "with vl.run(...), which passes them.")

    def update_batch(self, samples: Sequence["Sample"], traces: Sequence[list["Trace"]], *,
                     images: Sequence[Any] = ()) -> None:
        if not samples:
            return
        model = traces[0][0].model
        tokenizer = model.adapter.tokenizer
        ids = level_token_ids(tokenizer, self.levels)
        spans = windows(model.adapter.n_layers, self.window, self.stride)
        rows, meta = [], []
        for sample, image, sample_traces in zip(samples, images, traces):
            base = sample_traces[0]
            accumulate(self.sums, "n_samples", torch.ones(1))
            position = decision_position(base, self.levels, self.answer_prefix, tokenizer=tokenizer, level_ids=ids)
            if position is None:
                accumulate(self.sums, "n_no_level", torch.ones(1))
                continue
            accumulate(self.sums, "n_used", torch.ones(1))
            before = read(base.logits[query_index(base, position)], ids, self.levels, self.weights)
            for segment in self.segments:
                keys = positions_of(base, segment, self.levels, self.answer_prefix, tokenizer=tokenizer,
                                    level_ids=ids)
                if not keys:
                    accumulate(self.sums, f"n_without/{segment}", torch.ones(1))
                    continue
                for layers in spans:
                    rows.append((image, base, [knockout([position], keys, list(layers), self.heads)]))
                    meta.append((sample, segment, layers, len(keys), position, before))
        logits = sweep(model, rows, self.prompt, self.answer_prefix if self.prefill else None,
                       [m[4] for m in meta], self.sweep_batch)
        for (sample, segment, layers, n_keys, _, before), z in zip(meta, logits):
            after = read(z, ids, self.levels, self.weights, chosen=before.level)
            self.emit("samples", {"index": sample.index, "id": sample.id, "segment": segment,
                                  "window": f"{layers[0] + 1}-{layers[-1] + 1}", "first": layers[0] + 1,
                                  "last": layers[-1] + 1, "n_keys": n_keys, "score_base": before.score,
                                  "score": after.score, "d_score": change(after.score, before.score),
                                  "abs_d_score": abs(change(after.score, before.score)),
                                  "logp_base": before.logp, "logp": after.logp,
                                  "d_logp": change(after.logp, before.logp),
                                  "level_base": before.level, "level": after.level,
                                  "flipped": after.level != before.level})

    def result(self, rows: dict[str, pd.DataFrame] | None = None, *,
               higher_is_better: bool = True) -> dict[str, pd.DataFrame]:
        samples = self.frames(rows)["samples"]
        count = lambda key: int(self.sums[key].item()) if key in self.sums else 0  # noqa: E731
        summary = {"n_samples": count("n_samples"), "n_used": count("n_used"), "n_no_level": count("n_no_level")}
        summary.update({f"n_without_{s}": count(f"n_without/{s}") for s in self.segments})
        return {"samples": samples, "effects": effect_summary(samples, ["segment", "window", "first", "last"],
                                                             order={"segment": self.segments}),
                "summary": pd.DataFrame([summary])}


def effect_summary(samples: pd.DataFrame, keys: list[str], order: dict[str, Sequence[str]] | None = None,
                   extra: Sequence[str] = ()) -> pd.DataFrame:
    """Per group of ``keys``: ``n``, mean ``d_score`` with ``low, high`` (mean +- 1.96 s.e.), ``p`` (Wilcoxon of
    ``d_score`` against 0), mean ``abs_d_score``, mean ``d_logp``, ``flip_rate``, and the mean of each ``extra``
    column."""
    columns = [*keys, "n", "d_score", "low", "high", "p", "abs_d_score", "d_logp", "flip_rate", *extra]
    if not len(samples):
        return pd.DataFrame(columns=columns)
    out = []
    for key, group in samples.groupby(keys, sort=False):
        d = group["d_score"].to_numpy(float)
        sem = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.nan
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row.update(n=len(d), d_score=d.mean(), low=d.mean() - 1.96 * sem, high=d.mean() + 1.96 * sem,
                   p=wilcoxon(np.zeros_like(d), d), abs_d_score=np.abs(d).mean(),
                   d_logp=group["d_logp"].astype(float).mean(),
                   flip_rate=group["flipped"].astype(float).mean())
        row.update({c: group[c].astype(float).mean() for c in extra})
        out.append(row)
    table = pd.DataFrame(out)[columns]
    sort = []
    for column, values in (order or {}).items():
        rank = {v: i for i, v in enumerate(values)}
        table[f"_{column}"] = table[column].map(lambda v: rank.get(v, len(rank)))
        sort.append(f"_{column}")
    sort += [k for k in keys if k not in (order or {}) and k in ("first", "layer")]
    table = table.sort_values(sort, kind="stable") if sort else table
    return table.drop(columns=[c for c in table.columns if c.startswith("_")]).reset_index(drop=True)
