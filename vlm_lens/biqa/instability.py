"""Instability: ask the same image k times with sampling, and see whether the level — and the layers — hold.

The paper's observation: a BIQA model's level word flips between repeated sampled queries of the same image,
and across layers the logit lens at the level position keeps choosing among a *limited candidate set* of tokens.
Per image, from ``k`` sampled answers (temperature and top-p as given; repeat ``r`` of image ``id`` seeded with
``derive_seed(seed, id, r)``, so the draws do not depend on batching, sharding or resuming):

- ``changed``: the generated level word is not the same in every repeat that produced one (images with fewer
  than two such repeats are not compared, and counted);
- ``entropy_bits``: the entropy (base 2) of the distribution of generated level words over those repeats;
- per layer (hidden index), at each repeat's decision position (the position before the level word, see
  :mod:`vlm_lens.biqa.answer`): ``distinct_top1`` = how many different lens top-1 tokens occur across the repeats,
  ``distinct_topk`` = how many different tokens occur in the union of the repeats' lens top-``topk``, and
  ``level_mass`` = the mean probability the lens gives the level words together.

Example:
    >>> traces = [vl.trace(m, img, QALIGN_PROMPT, generate=2, do_sample=True, seed=s)  # doctest: +SKIP
    ...           for s in range(5)]
    >>> level_changes(traces)                       # doctest: +SKIP
    >>> candidate_set(traces, topk=5)               # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..core.checks import as_bool, as_int, as_number, as_text, as_words, is_integer
from ..core.errors import VlmLensError
from ..runs.reducers import Reducer, TraceRequest
from ..runs.stats import mean_interval, wilson
from ..tracing.lens import Lens
from ..tracing.logit_lens import resolve_lens
from .answer import AnswerLayout, level_token_ids, locate
from .vocabulary import ANSWER_PREFIX, LEVELS, QALIGN_PROMPT

if TYPE_CHECKING:
    from ..runs.datasets import Sample
    from ..tracing.record import Trace

__all__ = ["Instability", "candidate_set", "level_changes"]


def _layouts(traces: Sequence["Trace"], levels: Sequence[str], answer_prefix: str | None) -> list[AnswerLayout]:
    if not traces:
        raise VlmLensError("expected the traces of one image's repeated queries; got none.")
    if traces[0].model is None:
        raise VlmLensError("instability needs traces with their model attached (tokenizer and logit lens).")
    ids = level_token_ids(traces[0].model.adapter.tokenizer, levels)
    return [locate(t, levels, answer_prefix, level_ids=ids) for t in traces]


def level_changes(traces: Sequence["Trace"], levels: Sequence[str] = LEVELS, *,
                  answer_prefix: str | None = ANSWER_PREFIX,
                  layouts: Sequence[AnswerLayout] | None = None) -> pd.DataFrame:
    """Whether one image's generated level changes across its repeated queries.

    Returns:
        One-row DataFrame: ``n_repeats, n_found`` (repeats that generated a level word), ``levels`` (JSON list of
        the generated words, None where a repeat had none), ``n_distinct, changed`` (None with fewer than two
        found), ``entropy_bits``.
    """
    layouts = list(layouts) if layouts is not None else _layouts(traces, levels, answer_prefix)
    words = [layout.level for layout in layouts]
    found = [w for w in words if w is not None]
    return pd.DataFrame([{"n_repeats": len(words), "n_found": len(found), "levels": json.dumps(words),
                          "n_distinct": len(set(found)), "changed": (len(set(found)) > 1) if len(found) >= 2 else None,
                          "entropy_bits": _entropy_bits(found)}])


def _entropy_bits(words: list[str]) -> float:
    if not words:
        return float("nan")
    p = np.array(list(Counter(words).values()), dtype=float) / len(words)
    return float(abs(-(p * np.log2(p)).sum()))


def candidate_set(traces: Sequence["Trace"], levels: Sequence[str] = LEVELS, *, topk: int = 5,
                  answer_prefix: str | None = ANSWER_PREFIX, layouts: Sequence[AnswerLayout] | None = None,
                  lens: Lens | None = None) -> pd.DataFrame:
    """Per layer, how many distinct lens tokens the repeats of one image produce at their decision positions,
    read through the logit lens or ``lens`` (e.g. a tuned lens of the traces' model).

    Only repeats that generated a level word take part (``n``).

    Returns:
        DataFrame with columns ``layer, distinct_top1, distinct_topk, level_mass, n``; empty when no repeat
        generated a level word.
    """
    layouts = list(layouts) if layouts is not None else _layouts(traces, levels, answer_prefix)
    used = [(t, layout) for t, layout in zip(traces, layouts) if layout.has_level]
    columns = ["layer", "distinct_top1", "distinct_topk", "level_mass", "n"]
    if not used:
        return pd.DataFrame(columns=columns)
    adapter = used[0][0].model.adapter
    layers = list(used[0][0].layers)
    hidden = torch.stack([t.hidden_at([layout.decision_pos], layers)[:, 0] for t, layout in used], 1)
    reader = resolve_lens(lens, used[0][0].model, layers)
    probs = torch.softmax(reader.layer_logits(hidden, layers), -1)  # [layer, repeat, vocab], on the head's device
    top = probs.topk(topk, dim=-1).indices.cpu()  # [layer, repeat, k]
    ids = level_token_ids(adapter.tokenizer, levels)
    return pd.DataFrame({
        "layer": layers,
        "distinct_top1": [len(set(top[l, :, 0].tolist())) for l in range(len(layers))],
        "distinct_topk": [len(set(top[l].reshape(-1).tolist())) for l in range(len(layers))],
        "level_mass": probs[:, :, ids].sum(-1).double().mean(-1).cpu().numpy(),
        "n": len(used)})


class Instability(Reducer):
    """Dataset-level instability of the level over ``k`` sampled queries per image.

    Args:
        k: Sampled queries per image (>= 2).
        temperature, top_p, seed: Sampling settings (recorded per repeat).
        prompt, answer_prefix, prefill: The question, the sentence introducing the level, and whether the answer
            is prefilled with it (as :class:`~vlm_lens.iqa.Quality`).
        generate: Tokens to generate per query (2 covers "{level} ." after the answer prefix).
        levels: Level words.
        topk: Size of the lens candidate sets.
        lens: The lens the candidate sets are read through (None: the logit lens; e.g. a
            :class:`~vlm_lens.TunedLens` of the run's model).

    Tables: ``samples`` (per image: ``index, id`` + :func:`level_changes`), ``repeats`` (per query: ``index, id,
    repeat, seed, temperature, top_p, level, answer``), ``layer_samples`` (``index, id`` + :func:`candidate_set`),
    ``layers`` (per layer: means over images of ``distinct_top1, distinct_topk, level_mass``, and ``n`` images),
    ``summary`` (``n_images, n_compared, pct_changed, pct_changed_low, pct_changed_high, mean_entropy_bits,
    mean_entropy_bits_low, mean_entropy_bits_high, k, temperature, top_p, seed``: the share of compared images
    whose level changes with its 95% Wilson interval, the mean entropy with its Student-t interval).

    Example:
        >>> r = vl.run(m, ds, [Instability(k=8, temperature=1.0)], out="runs/unstable")  # doctest: +SKIP
        >>> r["instability.summary"]                                                     # doctest: +SKIP
    """

    name = "instability"
    tables = ("samples", "repeats", "layer_samples")

    def __init__(self, k: int = 5, *, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                 prompt: str = QALIGN_PROMPT, answer_prefix: str | None = ANSWER_PREFIX, prefill: bool = True,
                 generate: int = 2,
                 levels: Sequence[str] = LEVELS, topk: int = 5, lens: Lens | None = None) -> None:
        super().__init__()
        if not is_integer(k) or k < 2:
            raise VlmLensError(f"k={k!r}: instability needs at least 2 queries per image.")
        if not is_integer(topk) or topk < 1:
            raise VlmLensError(f"topk={topk!r}: expected an integer >= 1.")
        self.k, self.temperature = int(k), as_number(temperature, "temperature")
        self.top_p, self.seed = as_number(top_p, "top_p"), as_int(seed, "seed")
        self.prompt, self.answer_prefix = as_text(prompt, "prompt", optional=False), as_text(answer_prefix,
                                                                                              "answer_prefix")
        self.prefill, self.generate = as_bool(prefill, "prefill"), as_int(generate, "generate", minimum=0)
        self.levels, self.topk = as_words(levels, "levels"), int(topk)
        if lens is not None and not isinstance(lens, Lens):
            raise VlmLensError(f"lens={lens!r}: expected None (the logit lens) or a lens such as "
                               f"vl.TunedLens.load(folder, model); got {type(lens).__name__}.")
        self.lens = lens
        self.request()  # validates the sampling settings now, not at the first batch

    def config(self) -> dict[str, Any]:
        config = {"k": self.k, "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
                  "prompt": self.prompt, "answer_prefix": self.answer_prefix, "prefill": self.prefill,
                  "generate": self.generate,
                  "levels": self.levels, "topk": self.topk}
        if self.lens is not None:  # runs of the logit lens keep the fingerprint they always had
            config["lens"] = self.lens.describe()
        return config

    def arguments(self) -> dict[str, Any]:
        return {**self.config(), "lens": self.lens}

    def request(self) -> TraceRequest:
        return TraceRequest(self.prompt, self.answer_prefix if self.prefill else None, self.generate,
                            repeats=self.k, sampled=True,
                            temperature=self.temperature, top_p=self.top_p, seed=self.seed, hidden=True)

    def update(self, sample: "Sample", traces: list["Trace"]) -> None:
        head = {"index": sample.index, "id": sample.id}
        layouts = _layouts(traces, self.levels, self.answer_prefix)
        self.emit("samples", {**head, **level_changes(traces, layouts=layouts).iloc[0].to_dict()})
        for r, (t, layout) in enumerate(zip(traces, layouts)):
            self.emit("repeats", {**head, "repeat": r, "seed": t.meta.get("seed"),
                                  "temperature": self.temperature, "top_p": self.top_p, "level": layout.level,
                                  "answer": t.answer})
        table = candidate_set(traces, self.levels, topk=self.topk, layouts=layouts, lens=self.lens)
        for record in table.to_dict("records"):
            self.emit("layer_samples", {**head, **record})

    def result(self, rows: dict[str, pd.DataFrame] | None = None, *,
               higher_is_better: bool = True) -> dict[str, pd.DataFrame]:
        frames = self.frames(rows)
        samples, per_layer = frames["samples"], frames["layer_samples"]
        columns = ["distinct_top1", "distinct_topk", "level_mass"]
        if len(per_layer):
            grouped = per_layer.astype({c: float for c in columns}).groupby("layer", sort=True)
            layers = grouped[columns].mean()
            layers["n"] = grouped.size()
            layers = layers.reset_index()
        else:
            layers = pd.DataFrame(columns=["layer", *columns, "n"])
        compared = samples[samples["changed"].notna()] if len(samples) else samples
        changed = int(compared["changed"].astype(bool).sum()) if len(compared) else 0
        low, high = wilson(changed, len(compared))
        entropy = mean_interval(samples["entropy_bits"].to_numpy(float) if len(samples) else np.empty(0))
        summary = pd.DataFrame([{
            "n_images": len(samples), "n_compared": len(compared),
            "pct_changed": 100.0 * changed / len(compared) if len(compared) else np.nan,
            "pct_changed_low": 100.0 * low, "pct_changed_high": 100.0 * high,
            "mean_entropy_bits": entropy[0], "mean_entropy_bits_low": entropy[1], "mean_entropy_bits_high": entropy[2],
            "k": self.k, "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}])
        return {**frames, "layers": layers, "summary": summary}
