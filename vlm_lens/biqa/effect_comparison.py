"""Effects of interventions compared between checkpoints, paired per sample (part of :func:`vlm_lens.compare`).

Why paired: both checkpoints are knocked out (or patched) on the same images, so the question "does the two-stage
level depend more on the description than the one-stage level does?" is a paired one. Per (segment, window) of the
knockout analysis and per (segment, layer) of the patching analysis, the runs are aligned on sample ``id``;
``d_score``, ``abs_d_score`` and ``d_logp`` are tested with the Wilcoxon signed-rank test, flips with McNemar's
exact test. A run compared with itself gives zero differences and p = 1.

Example:
    >>> c = vl.compare({"one-stage": "runs/one", "two-stage": "runs/two"})              # doctest: +SKIP
    >>> c["knockout_differences"].query("quantity == 'd_score' and p < 0.05")             # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ..runs.stats import mcnemar, wilcoxon

if TYPE_CHECKING:
    from ..runs.engine import RunResult

__all__ = ["EFFECT_TABLES", "compare_effects"]

#: analysis -> the keys of one effect (besides the sample id)
EFFECT_TABLES = {"knockout": ["segment", "window", "first", "last"], "patching": ["segment", "layer"]}
_QUANTITIES = (("d_score", "wilcoxon"), ("abs_d_score", "wilcoxon"), ("d_logp", "wilcoxon"), ("flipped", "mcnemar"))


def compare_effects(runs: dict[str, "RunResult"], common: list[str], analysis: str) -> dict[str, pd.DataFrame]:
    """``{analysis: per run and effect the means, analysis_differences: paired tests against the first run}``.

    ``<analysis>`` has ``run``, the effect's keys, ``n``, ``d_score``, ``abs_d_score``, ``d_logp``, ``flip_rate``;
    ``<analysis>_differences`` has ``a, b``, the keys, ``quantity`` (``d_score``, ``abs_d_score``, ``d_logp``,
    ``flipped``),
    ``mean_a, mean_b, diff`` (b - a), ``p``, ``test``, ``n`` (samples both runs have).
    """
    keys = EFFECT_TABLES[analysis]
    tables = {}
    for name, r in runs.items():
        frame = r[f"{analysis}.samples"]
        frame = frame.assign(id=frame["id"].astype(str))
        frame = frame[frame["id"].isin(set(common))]
        tables[name] = frame.assign(flipped=frame["flipped"].astype(float))
    means = []
    for name, t in tables.items():
        grouped = t.groupby(keys, sort=False)
        means.append(pd.DataFrame({"n": grouped.size(), "d_score": grouped["d_score"].mean(),
                                   "abs_d_score": grouped["abs_d_score"].mean(),
                                   "d_logp": grouped["d_logp"].mean(),
                                   "flip_rate": grouped["flipped"].mean()}).reset_index()
                     .assign(run=name))
    reference = next(iter(runs))
    diffs = []
    for name in list(tables)[1:]:
        merged = tables[reference].merge(tables[name], on=["id", *keys], suffixes=("_a", "_b"))
        for key, group in merged.groupby(keys, sort=False):
            head = {"a": reference, "b": name, **dict(zip(keys, key))}
            for quantity, test in _QUANTITIES:
                x, y = group[f"{quantity}_a"].astype(float).to_numpy(), group[f"{quantity}_b"].astype(float).to_numpy()
                p = wilcoxon(x, y) if test == "wilcoxon" else mcnemar(x > 0.5, y > 0.5)
                diffs.append({**head, "quantity": quantity, "mean_a": x.mean(), "mean_b": y.mean(),
                              "diff": y.mean() - x.mean(), "p": p, "test": test, "n": len(group)})
    columns = ["a", "b", *keys, "quantity", "mean_a", "mean_b", "diff", "p", "test", "n"]
    return {analysis: pd.concat(means, ignore_index=True)[["run", *keys, "n", "d_score", "abs_d_score", "d_logp",
                                                            "flip_rate"]],
            f"{analysis}_differences": pd.DataFrame(diffs, columns=columns)}
