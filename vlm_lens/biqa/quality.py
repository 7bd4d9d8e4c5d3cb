"""Quality scores from the level-word logits, and what each layer's logit lens says about the level.

Why here: the BIQA models of the paper answer with a level word (excellent, good, fair, poor, bad), and the
field turns the *logits* of those words into a score instead of reading the word:

- **Q-Align score**: ``sum_i softmax(z_levels)_i * w_i`` — a softmax over the level words' logits only (not the
  whole vocabulary), weighted by ``w`` (default excellent..bad -> 5..1). Words and weights are configurable.
- **good/poor score** (Q-Bench / Q-Instruct): ``softmax(z_good, z_poor)_good`` in [0, 1].

Both read the logits at the *predicting position* of :mod:`vlm_lens.biqa.answer` (the position before the generated
level word, or the last prompt position when the prompt ends with "The quality of the image is" and nothing is
generated). ``level`` is the level word with the largest logit there; ``generated`` is the level word actually
generated (None without generation).

The logit lens at the same position gives, per layer (hidden index; 0 = decoder input): the top-1 token and
whether it *agrees* with the model's final top-1, ``kl`` = KL(final || layer) in nats over the whole vocabulary,
``level_mass`` = the probability the layer gives the level words together, and ``level_agree`` = whether the
layer's most probable level word is the final one. At the last layer agreement is 1 and KL 0 by construction.

Example:
    >>> t = vl.trace(m, "img.jpg", "How would you rate the quality of this image?")   # doctest: +SKIP
    >>> quality(t)[["level", "score", "good_poor"]]                                   # doctest: +SKIP
    >>> lens_by_layer(t)[["layer", "agree", "kl", "level_mass"]]                       # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..core.checks import as_bool, as_int, as_number, as_text, as_words
from ..core.errors import VlmLensError
from ..runs.reducers import Reducer, TraceRequest
from ..runs.stats import correlations
from ..tracing.logit_lens import LogitLens
from .answer import AnswerLayout, level_token_ids, locate, query_index, tokenizer_of
from .vocabulary import (
    ANSWER_PREFIX,
    GOOD_POOR,
    LEVELS,
    QALIGN_PROMPT,
    WEIGHT_SETS,
    WEIGHTS,
)

if TYPE_CHECKING:
    from ..runs.datasets import Sample
    from ..tracing.record import Trace

__all__ = ["Quality", "lens_by_layer", "quality", "weighted_score"]


def weighted_score(level_logits: torch.Tensor, weights: str | Sequence[float] = WEIGHTS) -> torch.Tensor:
    """``[..., n_levels]`` logits of the level words -> ``[...]`` Q-Align score (softmax over the levels only).

    This is the one Q-Align scorer of vlm_lens: every score (of a trace, a run, :func:`~vlm_lens.biqa.qalign_score`)
    goes through it.

    Args:
        level_logits: The logits of the level words only (``logits[..., level_ids]``), best level first.
        weights: One weight per level, or the name of a set of :data:`~vlm_lens.biqa.vocabulary.WEIGHT_SETS`
            (``"1-5"``, ``"0-1"``).

    Example:
        >>> round(float(weighted_score(torch.zeros(5))), 6)   # uniform over 5..1
        3.0
        >>> round(float(weighted_score(torch.tensor([50.0, 0, 0, 0, 0]), "0-1")), 6)
        1.0
    """
    if isinstance(weights, str):
        if weights not in WEIGHT_SETS:
            raise VlmLensError(f"weights={weights!r}: expected one of {sorted(WEIGHT_SETS)} or one number per level.")
        weights = WEIGHT_SETS[weights]
    w = torch.as_tensor([float(x) for x in weights], dtype=torch.float64)
    if level_logits.shape[-1] != len(w):
        raise VlmLensError(f"{level_logits.shape[-1]} level logits for {len(w)} weights; pass one weight per level.")
    return torch.softmax(level_logits.double(), dim=-1) @ w


def _check_levels(levels: Sequence[str], weights: Sequence[float]) -> None:
    if len(levels) < 2 or len(levels) != len(weights):
        raise VlmLensError(f"levels={list(levels)}, weights={list(weights)}: expected at least two level words and "
                           "one weight per word.")


def quality(trace: "Trace", levels: Sequence[str] = LEVELS, weights: Sequence[float] = WEIGHTS, *,
            answer_prefix: str | None = ANSWER_PREFIX, good_poor: Sequence[str] = GOOD_POOR, tokenizer: Any = None,
            layout: AnswerLayout | None = None) -> pd.DataFrame:
    """The quality of one trace: level, Q-Align score, good/poor score, level-word probabilities.

    Returns:
        One-row DataFrame: ``predict_pos, level_pos, generated, level, score, good_poor`` and ``p_<word>`` (the
        softmax over the level words) per level word. Scores are NaN when the sample has no level.

    Example:
        >>> quality(t, levels=["high", "low"], weights=[1, 0])   # doctest: +SKIP
    """
    _check_levels(levels, weights)
    tokenizer = tokenizer_of(trace, tokenizer)
    ids = level_token_ids(tokenizer, levels)
    layout = layout or locate(trace, levels, answer_prefix, tokenizer=tokenizer, level_ids=ids)
    return pd.DataFrame([_quality_row(trace, layout, levels, weights, ids, level_token_ids(tokenizer, good_poor))])


def _quality_row(trace: "Trace", layout: AnswerLayout, levels: Sequence[str], weights: Sequence[float],
                 ids: list[int], pair: list[int]) -> dict[str, Any]:
    row: dict[str, Any] = {"predict_pos": layout.predict_pos, "level_pos": layout.level_pos,
                           "generated": layout.level, "level": None, "score": np.nan, "good_poor": np.nan}
    row.update({f"p_{w}": np.nan for w in levels})
    if layout.has_level:
        logits = _logits_at(trace, layout.predict_pos)
        probs = torch.softmax(logits[ids].double(), -1)
        row.update(level=levels[int(probs.argmax())], score=float(weighted_score(logits[ids], weights)),
                   good_poor=float(torch.softmax(logits[pair].double(), -1)[0]))
        row.update({f"p_{w}": float(p) for w, p in zip(levels, probs)})
    return row


def lens_by_layer(trace: "Trace", levels: Sequence[str] = LEVELS, *, answer_prefix: str | None = ANSWER_PREFIX,
                  layers: Sequence[int] | None = None, layout: AnswerLayout | None = None) -> pd.DataFrame:
    """Per layer, the logit lens at the predicting position against the model's final distribution there.

    Returns:
        DataFrame with columns ``layer, top1_id, top1, agree, kl, level_mass, level, level_agree``; empty when the
        sample has no level.

    Example:
        >>> lens_by_layer(t).set_index("layer").kl.plot()   # doctest: +SKIP
    """
    if trace.model is None:
        raise VlmLensError("lens_by_layer needs the model (final norm and output head); trace with a model or "
                           "Trace.load(path, model=...).")
    ids = level_token_ids(trace.model.adapter.tokenizer, levels)
    layout = layout or locate(trace, levels, answer_prefix, level_ids=ids)
    return pd.DataFrame(_lens_tables([trace], [layout], levels, ids, layers)[0])


_LENS_COLUMNS = ("layer", "top1_id", "top1", "agree", "kl", "level_mass", "level", "level_agree")
#: Bytes of float64 lens logits computed at once (samples x layers x vocabulary).
LENS_CHUNK_BYTES = 64 * 2**20


def _lens_tables(traces: Sequence["Trace"], layouts: Sequence[AnswerLayout], levels: Sequence[str], ids: list[int],
                 layers: Sequence[int] | None = None) -> list[dict[str, list]]:
    """The columns of :func:`lens_by_layer` for each trace (empty without a level), for many traces at once: one
    output-head product and one log-softmax per chunk of samples instead of per sample. The traces must keep the
    same hidden layers (as the traces of one run do)."""
    out = [{c: [] for c in _LENS_COLUMNS} for _ in traces]
    used = [k for k, layout in enumerate(layouts) if layout.has_level]
    if not used:
        return out
    adapter = traces[used[0]].model.adapter
    layers = list(traces[used[0]].layers) if layers is None else list(layers)
    lens_model = LogitLens(adapter)
    chunk = max(1, LENS_CHUNK_BYTES // (8 * len(layers) * lens_model.vocab_size))
    for start in range(0, len(used), chunk):
        part = used[start:start + chunk]
        hidden = torch.stack([traces[k].hidden_at([layouts[k].predict_pos], layers)[:, 0] for k in part])
        lens = lens_model.logits(hidden).double()  # [sample, layer, vocab], on the output head's device
        final = torch.stack([_logits_at(traces[k], layouts[k].predict_pos) for k in part]).to(lens).double()
        log_lens, log_final = torch.log_softmax(lens, -1), torch.log_softmax(final, -1)
        kl = (log_final.exp()[:, None] * (log_final[:, None] - log_lens)).sum(-1).clamp(min=0.0)
        top1 = lens.argmax(-1)
        level_index = lens[..., ids].argmax(-1)
        agree = top1 == final.argmax(-1, keepdim=True)
        level_agree = level_index == final[:, ids].argmax(-1, keepdim=True)
        level_mass = log_lens[..., ids].exp().sum(-1)
        texts = adapter.token_texts(top1.reshape(-1).tolist())
        n = len(layers)
        for j, k in enumerate(part):
            out[k] = {"layer": layers, "top1_id": top1[j].tolist(), "top1": texts[j * n:(j + 1) * n],
                      "agree": agree[j].tolist(), "kl": kl[j].tolist(), "level_mass": level_mass[j].tolist(),
                      "level": [levels[int(i)] for i in level_index[j]], "level_agree": level_agree[j].tolist()}
    return out


def _logits_at(trace: "Trace", position: int) -> torch.Tensor:
    return trace.logits[query_index(trace, position)]


class Quality(Reducer):
    """Dataset-level quality: per-sample scores and levels, per-layer lens statistics, SRCC / PLCC with CIs.

    Args:
        levels, weights: Level words (best first) and their weights.
        prompt: The question asked.
        answer_prefix: The sentence that introduces the level (see :func:`vlm_lens.answer.locate`).
        prefill: Start the assistant's answer with ``answer_prefix`` (Q-Align); False for answers that are all
            generated (e.g. a description, then "The quality of the image is {level}.").
        generate: Tokens to generate (0: Q-Align style, read the prompt's last position).
        good_poor: The two words of the good/poor score.
        lens: Also compute :func:`lens_by_layer` per sample.
        n_boot, seed: Bootstrap resamples and seed of the confidence intervals.

    Tables: ``samples`` (one row per sample: ``index, id, mos`` + the columns of :func:`quality`),
    ``layer_samples`` (``index, id`` + the columns of :func:`lens_by_layer`), ``layers`` (per layer: means of
    ``agree, kl, level_mass, level_agree`` over samples with a level, and ``n``), ``correlations`` (``score``
    (``qalign`` or ``good_poor``), ``metric, value, low, high, n, n_missing``; empty without MOS).

    Example:
        >>> result = vl.run(m, ds, [Quality()], out="runs/x")     # doctest: +SKIP
        >>> result["quality.correlations"]                         # doctest: +SKIP
    """

    name = "quality"
    tables = ("samples", "layer_samples")

    def __init__(self, levels: Sequence[str] = LEVELS, weights: Sequence[float] = WEIGHTS, *,
                 prompt: str = QALIGN_PROMPT, answer_prefix: str | None = ANSWER_PREFIX, prefill: bool = True,
                 generate: int = 0, good_poor: Sequence[str] = GOOD_POOR, lens: bool = True, n_boot: int = 1000,
                 seed: int = 0) -> None:
        super().__init__()
        levels = as_words(levels, "levels")
        if isinstance(weights, (str, bytes)) or not hasattr(weights, "__iter__"):
            raise VlmLensError(f"weights={weights!r}: expected one number per level word.")
        _check_levels(levels, list(weights))
        self.levels, self.weights = levels, [as_number(w, f"weights[{i}]") for i, w in enumerate(weights)]
        self.prompt, self.answer_prefix = as_text(prompt, "prompt", optional=False), as_text(answer_prefix,
                                                                                              "answer_prefix")
        self.prefill, self.generate = as_bool(prefill, "prefill"), as_int(generate, "generate", minimum=0)
        self.good_poor, self.lens = as_words(good_poor, "good_poor"), as_bool(lens, "lens")
        self.n_boot, self.seed = as_int(n_boot, "n_boot", minimum=0), as_int(seed, "seed")

    def config(self) -> dict[str, Any]:
        return {"levels": self.levels, "weights": self.weights, "prompt": self.prompt,
                "answer_prefix": self.answer_prefix, "prefill": self.prefill, "generate": self.generate,
                "good_poor": self.good_poor, "lens": self.lens, "n_boot": self.n_boot, "seed": self.seed}

    def request(self) -> TraceRequest:
        return TraceRequest(self.prompt, self.answer_prefix if self.prefill else None, self.generate,
                            hidden=self.lens)

    def update(self, sample: "Sample", traces: list["Trace"]) -> None:
        self.update_batch([sample], [traces])

    def update_batch(self, samples: Sequence["Sample"], traces: Sequence[list["Trace"]]) -> None:
        """The samples of a batch, with one logit-lens product for all of them (one output-head call per batch
        instead of one per sample)."""
        if not samples:
            return
        first = [t[0] for t in traces]
        tokenizer = first[0].model.adapter.tokenizer
        ids, pair = level_token_ids(tokenizer, self.levels), level_token_ids(tokenizer, self.good_poor)
        layouts = [locate(t, self.levels, self.answer_prefix, tokenizer=tokenizer, level_ids=ids) for t in first]
        lens = _lens_tables(first, layouts, self.levels, ids) if self.lens else []
        for k, (sample, trace, layout) in enumerate(zip(samples, first, layouts)):
            head = {"index": sample.index, "id": sample.id}
            row = _quality_row(trace, layout, self.levels, self.weights, ids, pair)
            self.emit("samples", {**head, "mos": np.nan if sample.mos is None else sample.mos, **row})
            if self.lens:
                for values in zip(*lens[k].values()):
                    self.emit("layer_samples", {**head, **dict(zip(_LENS_COLUMNS, values))})

    def result(self, rows: dict[str, pd.DataFrame] | None = None, *,
               higher_is_better: bool = True) -> dict[str, pd.DataFrame]:
        frames = self.frames(rows)
        samples, per_layer = frames["samples"], frames["layer_samples"]
        out = {"samples": samples, "layer_samples": per_layer}
        columns = ["agree", "kl", "level_mass", "level_agree"]
        if len(per_layer):
            numeric = per_layer[["layer", *columns]].astype({c: float for c in columns})
            layers = numeric.groupby("layer", sort=True)[columns].mean()
            layers["n"] = per_layer.groupby("layer", sort=True).size()
            out["layers"] = layers.reset_index()
        else:
            out["layers"] = pd.DataFrame(columns=["layer", *columns, "n"])
        tables = []
        if len(samples) and samples["mos"].notna().all():
            for score, column in (("qalign", "score"), ("good_poor", "good_poor")):
                table = correlations(samples[column].to_numpy(float), samples["mos"].to_numpy(float),
                                     higher_is_better=higher_is_better, n_boot=self.n_boot, seed=self.seed)
                tables.append(table.assign(score=score))
        out["correlations"] = (pd.concat(tables, ignore_index=True)[["score", "metric", "value", "low", "high", "n",
                                                                     "n_missing"]]
                               if tables else pd.DataFrame(columns=["score", "metric", "value", "low", "high", "n",
                                                                    "n_missing"]))
        return out
