"""Quality scores from the level-word logits, and what each layer's logit lens says about the level.

Why here: the BIQA models of the paper answer with a level word (excellent, good, fair, poor, bad), and the
field turns the *logits* of those words into a score instead of reading the word:

- **Q-Align score**: ``sum_i softmax(z_levels)_i * w_i`` — a softmax over the level words' logits only (not the
  whole vocabulary), weighted by ``w`` (default excellent..bad -> 5..1). Words and weights are configurable.
- **good/poor score** (Q-Bench / Q-Instruct): ``softmax(z_good, z_poor)_good`` in [0, 1].

Both read the logits at the *decision position* of :mod:`vlm_lens.biqa.answer` (the position before the generated
level word, or the last prompt position when the prompt ends with "The quality of the image is" and nothing is
generated). ``level`` is the level word with the largest logit there; ``generated`` is the level word actually
generated (None without generation). A sample without a decision position gets no number: its scores are NaN and
``no_level_reason`` says why (an answer without a level word; a prompt neither prefilled nor answered).

The logit lens at the same position gives, per layer (hidden index; 0 = decoder input): the top-1 token and
whether it *agrees* with the model's final top-1, ``kl`` = KL(final || layer) in nats over the whole vocabulary,
``level_mass`` = the probability the layer gives the level words together, ``level_agree`` = whether the layer's
most probable level word is the final one, and ``level_top1`` = whether the layer's top-1 token *is* the level
word read there (``level``). At the last layer agreement is 1 and KL 0 by construction. Per sample,
``first_top1`` is the first layer where ``level_top1`` holds and ``stays_top1`` the first layer from which it holds
to the last layer (NaN when never): the paper's "at which layer does the level become the lens's top-1".

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
from ..runs.stats import correlations, wilson
from ..tracing.lens import Lens
from ..tracing.logit_lens import resolve_lens
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

__all__ = ["Quality", "first_top1", "lens_by_layer", "quality", "weighted_score"]


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
        One-row DataFrame: ``decision_pos, level_pos, generated, level, score, good_poor``, ``p_<word>`` (the
        softmax over the level words) per level word, and ``no_level_reason``. Scores are NaN when the sample has
        no level, and ``no_level_reason`` says why (None when it has one).

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
    row: dict[str, Any] = {"decision_pos": layout.decision_pos, "level_pos": layout.level_pos,
                           "generated": layout.level, "level": None, "score": np.nan, "good_poor": np.nan}
    row.update({f"p_{w}": np.nan for w in levels})
    row["no_level_reason"] = layout.reason
    if layout.has_level:
        logits = _logits_at(trace, layout.decision_pos)
        probs = torch.softmax(logits[ids].double(), -1)
        row.update(level=levels[int(probs.argmax())], score=float(weighted_score(logits[ids], weights)),
                   good_poor=float(torch.softmax(logits[pair].double(), -1)[0]))
        row.update({f"p_{w}": float(p) for w, p in zip(levels, probs)})
    return row


def lens_by_layer(trace: "Trace", levels: Sequence[str] = LEVELS, *, answer_prefix: str | None = ANSWER_PREFIX,
                  layers: Sequence[int] | None = None, layout: AnswerLayout | None = None,
                  lens: Lens | None = None) -> pd.DataFrame:
    """Per layer, the logit lens (or ``lens``, e.g. a tuned lens) at the decision position against the model's
    final distribution there.

    Returns:
        DataFrame with columns ``layer, top1_id, top1, agree, kl, level_mass, level, level_agree, level_top1``;
        empty when the sample has no level.

    Example:
        >>> lens_by_layer(t).set_index("layer").kl.plot()   # doctest: +SKIP
    """
    if trace.model is None:
        raise VlmLensError("lens_by_layer needs the model (final norm and output head); trace with a model or "
                           "Trace.load(path, model=...).")
    ids = level_token_ids(trace.model.adapter.tokenizer, levels)
    layout = layout or locate(trace, levels, answer_prefix, level_ids=ids)
    return pd.DataFrame(_lens_tables([trace], [layout], levels, ids, layers, lens)[0])


_LENS_COLUMNS = ("layer", "top1_id", "top1", "agree", "kl", "level_mass", "level", "level_agree", "level_top1")
#: Bytes of float64 lens logits computed at once (samples x layers x vocabulary).
LENS_CHUNK_BYTES = 64 * 2**20


def _lens_tables(traces: Sequence["Trace"], layouts: Sequence[AnswerLayout], levels: Sequence[str], ids: list[int],
                 layers: Sequence[int] | None = None, lens: Lens | None = None) -> list[dict[str, list]]:
    """The columns of :func:`lens_by_layer` for each trace (empty without a level), for many traces at once: one
    output-head product and one log-softmax per chunk of samples instead of per sample. The traces must keep the
    same hidden layers (as the traces of one run do); ``lens`` reads them (None: the logit lens)."""
    out = [{c: [] for c in _LENS_COLUMNS} for _ in traces]
    used = [k for k, layout in enumerate(layouts) if layout.has_level]
    if not used:
        return out
    adapter = traces[used[0]].model.adapter
    layers = list(traces[used[0]].layers) if layers is None else list(layers)
    reader = resolve_lens(lens, traces[used[0]].model, layers)
    chunk = max(1, LENS_CHUNK_BYTES // (8 * len(layers) * reader.vocab_size))
    for start in range(0, len(used), chunk):
        part = used[start:start + chunk]
        hidden = torch.stack([traces[k].hidden_at([layouts[k].decision_pos], layers)[:, 0] for k in part])
        read = reader.layer_logits(hidden, layers, dim=1).double()  # [sample, layer, vocab], on the head's device
        final = torch.stack([_logits_at(traces[k], layouts[k].decision_pos) for k in part]).to(read).double()
        log_lens, log_final = torch.log_softmax(read, -1), torch.log_softmax(final, -1)
        kl = (log_final.exp()[:, None] * (log_final[:, None] - log_lens)).sum(-1).clamp(min=0.0)
        top1 = read.argmax(-1)
        level_index = read[..., ids].argmax(-1)
        agree = top1 == final.argmax(-1, keepdim=True)
        final_level = final[:, ids].argmax(-1, keepdim=True)
        level_agree = level_index == final_level
        level_top1 = top1 == torch.as_tensor(ids, device=final.device)[final_level]  # lens top-1 is the level read
        level_mass = log_lens[..., ids].exp().sum(-1)
        texts = adapter.token_texts(top1.reshape(-1).tolist())
        n = len(layers)
        for j, k in enumerate(part):
            out[k] = {"layer": layers, "top1_id": top1[j].tolist(), "top1": texts[j * n:(j + 1) * n],
                      "agree": agree[j].tolist(), "kl": kl[j].tolist(), "level_mass": level_mass[j].tolist(),
                      "level": [levels[int(i)] for i in level_index[j]], "level_agree": level_agree[j].tolist(),
                      "level_top1": level_top1[j].tolist()}
    return out


def first_top1(layers: Sequence[int], level_top1: Sequence[bool]) -> tuple[float, float]:
    """``(first, stays)``: the first layer where the level is the lens's top-1, and the first layer from which it
    stays top-1 through the last layer; NaN when it never is (``stays`` is NaN too when the last layer lacks it).

    Example:
        >>> first_top1([0, 1, 2, 3], [False, True, False, True])
        (1.0, 3.0)
    """
    flags = [bool(f) for f in level_top1]
    if not any(flags):
        return float("nan"), float("nan")
    first = float(layers[flags.index(True)])
    if not flags[-1]:
        return first, float("nan")
    last_off = max((i for i, f in enumerate(flags) if not f), default=-1)
    return first, float(layers[last_off + 1])


_SHARES = ("agree", "level_agree", "level_top1")


def _layer_table(per_layer: pd.DataFrame) -> pd.DataFrame:
    """Per layer: means over samples, Wilson intervals of the shares, and ``n`` (old runs lack ``level_top1``)."""
    columns = [c for c in ("agree", "kl", "level_mass", "level_agree", "level_top1") if c in per_layer.columns
               or not len(per_layer)]
    bounds = [f"{c}_{side}" for c in _SHARES if c in columns for side in ("low", "high")]
    if not len(per_layer):
        return pd.DataFrame(columns=["layer", *columns, *bounds, "n"])
    numeric = per_layer[["layer", *columns]].astype({c: float for c in columns})
    grouped = numeric.groupby("layer", sort=True)
    layers = grouped[columns].mean()
    layers["n"] = grouped.size()
    for c in _SHARES:
        if c in columns:
            hits = grouped[c].sum()
            layers[f"{c}_low"], layers[f"{c}_high"] = zip(*(wilson(hits[l], layers.loc[l, "n"]) for l in layers.index))
    return layers.reset_index()[["layer", *columns, *bounds, "n"]]


def _first_top1_table(samples: pd.DataFrame, per_layer: pd.DataFrame) -> pd.DataFrame:
    """How many samples with a level reach the lens's top-1 first at each layer (``<NA>``: never)."""
    if not len(per_layer) or "first_top1" not in samples.columns:
        return pd.DataFrame({"layer": pd.array([], dtype="Int64"), "n": [], "share": []})
    with_level = samples[samples["score"].notna()]
    counts = with_level["first_top1"].astype("Int64").value_counts(dropna=False)
    layers = sorted(int(layer) for layer in per_layer["layer"].unique())
    values = [*layers, pd.NA]
    n = [int(counts.get(v, 0)) for v in layers] + [int(with_level["first_top1"].isna().sum())]
    total = max(len(with_level), 1)
    return pd.DataFrame({"layer": pd.array(values, dtype="Int64"), "n": n, "share": [k / total for k in n]})


def _level_table(samples: pd.DataFrame, levels: Sequence[str]) -> pd.DataFrame:
    """The level read per sample, counted in the order of ``levels`` (best first), not alphabetically."""
    read = samples["level"].dropna() if "level" in samples.columns else pd.Series([], dtype=object)
    n = [int((read == w).sum()) for w in levels]
    return pd.DataFrame({"level": list(levels), "n": n, "share": [k / max(len(read), 1) for k in n]})


def check_question(prefill: bool, generate: int) -> None:
    """Refuse a question whose level is neither prefilled nor generated: its last prompt position predicts the
    start of an answer ("the"), and a score read there would be a number without a meaning."""
    if not prefill and not generate:
        raise VlmLensError("prefill=False with generate=0: the level is neither prefilled nor generated, so there is "
                           "no position where the model decides it (the last prompt position predicts the start "
                           "of an answer). Keep prefill=True (Q-Align: the answer starts with 'The quality of the "
                           "image is') or generate the answer (generate=48).")


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
        generate: Tokens to generate (0: Q-Align style, read the prompt's last position; needs ``prefill``: a
            level that is neither prefilled nor generated is never read, so ``prefill=False, generate=0`` is
            refused).
        good_poor: The two words of the good/poor score.
        lens: Also compute :func:`lens_by_layer` per sample: True through the logit lens, or a lens of the run's
            model (e.g. a :class:`~vlm_lens.TunedLens`) to read the layers through; False for none.
        n_boot, seed: Bootstrap resamples and seed of the confidence intervals.

    Tables: ``samples`` (one row per sample: ``index, id, mos`` + the columns of :func:`quality` + ``first_top1,
    stays_top1`` of :func:`first_top1`, NaN without the lens), ``layer_samples`` (``index, id`` + the columns of
    :func:`lens_by_layer`), ``layers`` (per layer: means of ``agree, kl, level_mass, level_agree, level_top1`` over
    samples with a level, a 95% Wilson interval ``<share>_low, <share>_high`` for each of the three shares, and
    ``n``), ``first_top1`` (``layer, n, share``: how many samples' level first becomes the lens's top-1 at each
    layer; ``layer`` is missing (<NA>) for samples whose lens never has it on top), ``levels`` (``level, n, share``:
    the level read, in the order of ``levels``, share among samples with a level), ``correlations`` (``score``
    (``qalign`` or ``good_poor``), ``metric, value, low, high, n, n_missing``; empty without MOS). Layers are hidden
    indices (0 = decoder input).

    Example:
        >>> result = vl.run(m, ds, [Quality()], out="runs/x")     # doctest: +SKIP
        >>> result["quality.correlations"]                         # doctest: +SKIP
    """

    name = "quality"
    tables = ("samples", "layer_samples")

    def __init__(self, levels: Sequence[str] = LEVELS, weights: Sequence[float] = WEIGHTS, *,
                 prompt: str = QALIGN_PROMPT, answer_prefix: str | None = ANSWER_PREFIX, prefill: bool = True,
                 generate: int = 0, good_poor: Sequence[str] = GOOD_POOR, lens: bool | Lens = True,
                 n_boot: int = 1000, seed: int = 0) -> None:
        super().__init__()
        levels = as_words(levels, "levels")
        if isinstance(weights, (str, bytes)) or not hasattr(weights, "__iter__"):
            raise VlmLensError(f"weights={weights!r}: expected one number per level word.")
        _check_levels(levels, list(weights))
        self.levels, self.weights = levels, [as_number(w, f"weights[{i}]") for i, w in enumerate(weights)]
        self.prompt, self.answer_prefix = as_text(prompt, "prompt", optional=False), as_text(answer_prefix,
                                                                                              "answer_prefix")
        self.prefill, self.generate = as_bool(prefill, "prefill"), as_int(generate, "generate", minimum=0)
        if not isinstance(lens, Lens) and not isinstance(lens, (bool, np.bool_)):
            raise VlmLensError(f"lens={lens!r}: expected True (the logit lens), False (no per-layer readings) or a "
                               f"lens such as vl.TunedLens.load(folder, model); got {type(lens).__name__}.")
        self.reader = lens if isinstance(lens, Lens) else None
        self.good_poor, self.lens = as_words(good_poor, "good_poor"), bool(lens)
        self.n_boot, self.seed = as_int(n_boot, "n_boot", minimum=0), as_int(seed, "seed")
        check_question(self.prefill, self.generate)

    def config(self) -> dict[str, Any]:
        return {"levels": self.levels, "weights": self.weights, "prompt": self.prompt,
                "answer_prefix": self.answer_prefix, "prefill": self.prefill, "generate": self.generate,
                "good_poor": self.good_poor, "lens": self.reader.describe() if self.reader is not None else self.lens,
                "n_boot": self.n_boot, "seed": self.seed}

    def arguments(self) -> dict[str, Any]:
        return {**self.config(), "lens": self.reader if self.reader is not None else self.lens}

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
        lens = _lens_tables(first, layouts, self.levels, ids, lens=self.reader) if self.lens else []
        for k, (sample, trace, layout) in enumerate(zip(samples, first, layouts)):
            head = {"index": sample.index, "id": sample.id}
            row = _quality_row(trace, layout, self.levels, self.weights, ids, pair)
            first, stays = first_top1(lens[k]["layer"], lens[k]["level_top1"]) if self.lens else (np.nan, np.nan)
            self.emit("samples", {**head, "mos": np.nan if sample.mos is None else sample.mos, **row,
                                  "first_top1": first, "stays_top1": stays})
            if self.lens:
                for values in zip(*lens[k].values()):
                    self.emit("layer_samples", {**head, **dict(zip(_LENS_COLUMNS, values))})

    def result(self, rows: dict[str, pd.DataFrame] | None = None, *,
               higher_is_better: bool = True) -> dict[str, pd.DataFrame]:
        frames = self.frames(rows)
        samples, per_layer = frames["samples"], frames["layer_samples"]
        out = {"samples": samples, "layer_samples": per_layer, "layers": _layer_table(per_layer),
               "first_top1": _first_top1_table(samples, per_layer), "levels": _level_table(samples, self.levels)}
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
