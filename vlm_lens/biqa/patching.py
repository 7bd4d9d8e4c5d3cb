"""Where the quality information lives: another checkpoint's residual stream patched in, layer by layer.

Why: a knockout (:mod:`vlm_lens.biqa.effects`) says which path the decision needs; patching says which
*representation* carries the level. For each sample both checkpoints answer the same question about the same image
(each its own generated answer); then, for each chosen segment and each hidden index ``l``, the target's
teacher-forced pass over its own answer runs with the residual stream at ``l`` and those positions replaced by the
source's (:func:`~vlm_lens.tracing.interventions.patch`). Segments are matched by name: ``"image"`` and
``"instruction"`` are the same positions in both (same prompt), ``"decision"`` is each one's own decision position,
and segments of different lengths (two descriptions) are left out for that sample (counted in ``summary``).

Read at the target's decision position: ``d_score`` (patched minus target Q-Align score), ``d_logp`` (of the
target's level word), ``flipped`` (the level changed), ``to_source`` (it became the source's level), and
``recovered`` = ``(patched - target) / (source - target)`` for samples whose two scores differ by at least
``min_gap``: 0 = nothing of the source's judgement came through, 1 = all of it. Patching the decision position at
the last hidden index gives the source's final state there, hence (up to the final norm and head, which differ
between checkpoints) the source's reading.

Example:
    >>> source = vl.load("zoo:tiny-biqa-one-stage")                                   # doctest: +SKIP
    >>> r = vl.run(vl.load("zoo:tiny-biqa-two-stage"), ds, [vl.analyses.PatchingEffects(source)])  # doctest: +SKIP
    >>> r["patching.effects"].pivot(index="layer", columns="segment", values="recovered")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..core.errors import VlmLensError
from ..runs.checkpoint import model_fingerprint
from ..runs.reducers import Reducer, TraceRequest, accumulate
from ..tracing.interventions import patch
from ..tracing.loading import LensModel
from ..tracing.settings import Keep
from ..tracing.tracer import trace
from .answer import level_token_ids, query_index
from .effects import change, effect_summary, read, sweep
from .positions import decision_position, positions_of
from .quality import _check_levels
from .vocabulary import ANSWER_PREFIX, LEVELS, QALIGN_PROMPT, WEIGHTS

if TYPE_CHECKING:
    from ..runs.datasets import Sample
    from ..tracing.record import Trace

__all__ = ["PatchingEffects"]

#: Default patched segments.
PATCH_SEGMENTS = ("image", "decision")


class PatchingEffects(Reducer):
    """Per sample, patch ``source``'s residual stream into the run's model at each hidden index and segment.

    Args:
        source: The checkpoint to read from (same architecture and width as the run's model).
        segments: Position names to patch (matched by name between the two sequences, see the module docstring).
        layers: Hidden indices (0 = decoder input, ``l`` = output of decoder layer ``l``); None: all.
        prompt, answer_prefix, prefill, generate: The question and how the answers come (as
            :class:`~vlm_lens.biqa.effects.KnockoutEffects`).
        levels, weights: Level words and their Q-Align weights.
        min_gap: Smallest ``|score_source - score_target|`` for which ``recovered`` is computed.
        sweep_batch: Teacher-forced passes per forward.

    Tables: ``samples`` (``index, id, segment, layer, n_positions, score_target, score_source, score, d_score,
    abs_d_score, recovered, logp_target, logp, d_logp, level_target, level_source, level, flipped, to_source``),
    ``effects`` (per segment and layer: ``n``, mean ``d_score`` with ``low, high, p``, means of ``abs_d_score``,
    ``d_logp``, ``flip_rate``, ``recovered`` and ``to_source``), ``summary`` (``n_samples, n_used, n_no_level``
    and ``n_unmatched_<segment>``).
    """

    name = "patching"
    tables = ("samples",)
    needs_images = True

    def __init__(self, source: LensModel, segments: Sequence[str] = PATCH_SEGMENTS, *,
                 layers: Sequence[int] | None = None, prompt: str = QALIGN_PROMPT,
                 answer_prefix: str | None = ANSWER_PREFIX, prefill: bool = False, generate: int = 48,
                 levels: Sequence[str] = LEVELS, weights: Sequence[float] = WEIGHTS, min_gap: float = 0.25,
                 sweep_batch: int = 64) -> None:
        super().__init__()
        if not isinstance(source, LensModel):
            raise VlmLensError(f"PatchingEffects(source=...): expected the checkpoint to patch from, loaded with "
                               f"vl.load(...); got {type(source).__name__}.")
        _check_levels(levels, weights)
        if isinstance(segments, str) or not segments or not all(isinstance(s, str) for s in segments):
            raise VlmLensError(f"segments={segments!r}: expected a list of position names, e.g. "
                               f"{list(PATCH_SEGMENTS)}.")
        n = source.adapter.n_layers
        self.layers = list(range(n + 1)) if layers is None else sorted({int(l) % (n + 1) for l in layers})
        if layers is not None and any(not -(n + 1) <= int(l) <= n for l in layers):
            raise VlmLensError(f"layers={list(layers)}: expected hidden indices 0..{n} of the source.")
        self.source, self.segments = source, list(segments)
        self._fingerprint = model_fingerprint(source)  # the run's fingerprint names the source's weights
        self.prompt, self.answer_prefix = prompt, answer_prefix
        self.prefill, self.generate = bool(prefill), int(generate)
        self.levels, self.weights = list(levels), [float(w) for w in weights]
        self.min_gap, self.sweep_batch = float(min_gap), int(sweep_batch)

    def config(self) -> dict[str, Any]:
        return {"source": self._fingerprint,
                "segments": self.segments, "layers": self.layers, "prompt": self.prompt,
                "answer_prefix": self.answer_prefix, "prefill": self.prefill, "generate": self.generate,
                "levels": self.levels, "weights": self.weights, "min_gap": self.min_gap,
                "sweep_batch": self.sweep_batch}

    def arguments(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.config().items() if k != "source"}, "source": self.source}

    def request(self) -> TraceRequest:
        return TraceRequest(self.prompt, self.answer_prefix if self.prefill else None, self.generate)

    def update(self, sample: "Sample", traces: list["Trace"]) -> None:
        raise VlmLensError("PatchingEffects traces its samples again; it needs their images: run it with "
                           "vl.run(...), which passes them.")

    def update_batch(self, samples: Sequence["Sample"], traces: Sequence[list["Trace"]], *,
                     images: Sequence[Any] = ()) -> None:
        if not samples:
            return
        model = traces[0][0].model
        prefill = self.answer_prefix if self.prefill else None
        sources = trace(self.source, list(images), [self.prompt] * len(images), generate=self.generate,
                        prefill=prefill, keep=Keep(attention=False))
        if not isinstance(sources, list):
            sources = [sources]
        ids = level_token_ids(model.adapter.tokenizer, self.levels)
        source_ids = level_token_ids(self.source.adapter.tokenizer, self.levels)
        rows, meta = [], []
        for sample, image, sample_traces, source in zip(samples, images, traces, sources):
            base = sample_traces[0]
            accumulate(self.sums, "n_samples", torch.ones(1))
            position = decision_position(base, self.levels, self.answer_prefix, level_ids=ids)
            source_position = decision_position(source, self.levels, self.answer_prefix, level_ids=source_ids)
            if position is None or source_position is None:
                accumulate(self.sums, "n_no_level", torch.ones(1))
                continue
            accumulate(self.sums, "n_used", torch.ones(1))
            before = read(base.logits[query_index(base, position)], ids, self.levels, self.weights)
            theirs = read(source.logits[query_index(source, source_position)], source_ids, self.levels, self.weights)
            for segment in self.segments:
                here = positions_of(base, segment, self.levels, self.answer_prefix, level_ids=ids)
                there = positions_of(source, segment, self.levels, self.answer_prefix, level_ids=source_ids)
                if not here or len(here) != len(there):
                    accumulate(self.sums, f"n_unmatched/{segment}", torch.ones(1))
                    continue
                for layer in self.layers:
                    rows.append((image, base, [patch(source, here, [layer], source_positions=there)]))
                    meta.append((sample, segment, layer, len(here), position, before, theirs))
        logits = sweep(model, rows, self.prompt, prefill, [m[4] for m in meta], self.sweep_batch)
        for (sample, segment, layer, n, _, before, theirs), z in zip(meta, logits):
            after = read(z, ids, self.levels, self.weights, chosen=before.level)
            gap, moved = theirs.score - before.score, change(after.score, before.score)
            self.emit("samples", {
                "index": sample.index, "id": sample.id, "segment": segment, "layer": layer, "n_positions": n,
                "score_target": before.score, "score_source": theirs.score, "score": after.score,
                "d_score": moved, "abs_d_score": abs(moved),
                "recovered": moved / gap if abs(gap) >= self.min_gap else np.nan,
                "logp_target": before.logp, "logp": after.logp, "d_logp": change(after.logp, before.logp),
                "level_target": before.level, "level_source": theirs.level, "level": after.level,
                "flipped": after.level != before.level, "to_source": after.level == theirs.level})

    def result(self, rows: dict[str, pd.DataFrame] | None = None, *,
               higher_is_better: bool = True) -> dict[str, pd.DataFrame]:
        samples = self.frames(rows)["samples"]
        count = lambda key: int(self.sums[key].item()) if key in self.sums else 0  # noqa: E731
        summary = {"n_samples": count("n_samples"), "n_used": count("n_used"), "n_no_level": count("n_no_level")}
        summary.update({f"n_unmatched_{s}": count(f"n_unmatched/{s}") for s in self.segments})
        effects = effect_summary(samples, ["segment", "layer"], order={"segment": self.segments},
                                 extra=("recovered", "to_source"))
        return {"samples": samples, "effects": effects, "summary": pd.DataFrame([summary])}
