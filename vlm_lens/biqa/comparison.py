"""``compare``: several checkpoints' runs on the same samples, aligned, with paired significance.

Why paired: two checkpoints scored on the same images differ by less than either differs across images, so
comparing their summary numbers (each with its own confidence interval) wastes most of the evidence. Every table
here is computed on the samples *all* runs analysed (aligned on sample ``id``), and every difference is tested
pairwise against the first run (the reference):

- correlations (SRCC, PLCC, logistic PLCC of the Q-Align and good/poor scores): paired bootstrap, same resampled
  images for both runs (:func:`vlm_lens.stats.paired_correlations`);
- per layer (logit lens at the decision position): ``kl`` and ``level_mass`` by the Wilcoxon signed-rank test
  over samples, ``agree``, ``level_agree`` and ``level_top1`` by McNemar's exact test;
- the layer where the level first becomes the lens's top-1: Wilcoxon over the samples where both runs reach it
  (how many never do is counted per run);
- attention mass per (layer, segment) (mean over heads) of every attention analysis: Wilcoxon over samples;
- instability: whether the level changes (McNemar, over images compared in both runs) and its entropy (Wilcoxon);
- effects of knockouts and patching (:mod:`vlm_lens.biqa.effect_comparison`): per effect, ``d_score`` and
  ``d_logp`` by Wilcoxon, flips by McNemar.

Every ``*_differences`` table holds many tests (one per layer, segment, metric ...), so each also has
``p_adjusted``: Holm's correction over that table's tests (:func:`vlm_lens.runs.stats.holm`). The ``significant``
table lists every difference whose adjusted p-value is below ``alpha`` (0.05), from every table: what differs,
by how much, and how sure.

A run compared with itself gives zero differences and p = 1 everywhere. Per-layer readings are compared only between
runs read through the same kind of lens (the logit lens, or each checkpoint's own tuned lens: ``Quality(lens=...)``);
``lens=`` says which kind the comparison requires.

Example:
    >>> c = vl.compare({"one-stage": "runs/one-stage", "two-stage": "runs/two-stage"})   # doctest: +SKIP
    >>> c["correlation_differences"]                                                      # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..core.checks import as_int, as_number, make_folder, shown
from ..core.errors import VlmLensError
from ..runs.checkpoint import write_json, write_table
from ..runs.engine import RunResult
from ..runs.stats import correlations, holm, mcnemar, mean_interval, paired_correlations, wilcoxon, wilson
from .legacy import upgrade
from .effect_comparison import EFFECT_TABLES, compare_effects

__all__ = ["Comparison", "compare"]

_LENS = ("agree", "kl", "level_mass", "level_agree", "level_top1")
#: The kinds of lens per-layer readings can be read through (``compare(lens=...)``).
LENS_KINDS = ("logit", "tuned")
_BINARY = ("agree", "level_agree", "level_top1")
#: Columns of the ``significant`` table.
SIGNIFICANT_COLUMNS = ["table", "what", "a", "b", "value_a", "value_b", "diff", "p", "p_adjusted", "test", "n"]


@dataclass
class Comparison:
    """Aligned tables of several runs.

    Attributes:
        runs: Run names, the reference first.
        tables: ``samples`` (``run, id, mos, score, good_poor, level, first_top1``), ``correlations`` (``run,
            score, metric, value, low, high, n``), ``correlation_differences`` (``a, b, score, metric, diff, low,
            high, p, p_adjusted, n`` with ``diff = b - a``), ``layers`` (``run, layer, agree, kl, level_mass,
            level_agree, level_top1, n``), ``layer_differences`` (``a, b, layer, quantity, mean_a, mean_b, diff,
            p, p_adjusted, test, n``), ``first_top1`` (``run, layer, n, share``; ``layer`` <NA>: never),
            ``first_top1_differences`` (``a, b, mean_a, mean_b, diff, p, p_adjusted, test, n, never_a,
            never_b``), ``attention`` (``run, layer, segment, mass, low, high, n``), ``attention_differences``
            (``a, b, layer, segment, mass_a, mass_b, diff, p, p_adjusted, n``) — and the same two per further
            attention analysis of the runs, named after it (``attention_level``, ``attention_level_differences``)
            —, ``instability`` (``run, pct_changed, pct_changed_low, pct_changed_high, mean_entropy_bits, n``),
            ``instability_differences`` (``a, b, quantity, value_a, value_b, diff, p, p_adjusted, test, n``),
            ``knockout`` / ``patching`` and ``knockout_differences`` / ``patching_differences`` (see
            :func:`~vlm_lens.biqa.effect_comparison.compare_effects`),
            ``significant`` (``table, what, a, b, value_a, value_b, diff, p, p_adjusted, test, n``: every
            difference with ``p_adjusted < alpha``). Tables of an analysis that not every run has are absent (see
            ``notes``). Layers: hidden indices for the lens (0 = decoder input), decoder blocks for attention
            (1 = the first), the same numbers for the same block.
        notes: What was aligned or left out, and why.
    """

    runs: list[str]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self.tables:
            raise VlmLensError(f"no table {name!r} in this comparison; it has {sorted(self.tables)}. "
                               f"Notes: {self.notes}")
        return self.tables[name]

    def __repr__(self) -> str:
        return f"Comparison(runs={self.runs}, tables={sorted(self.tables)}, notes={len(self.notes)})"

    def save(self, folder: str | Path) -> Path:
        """``<table>.parquet`` + ``.csv`` per table and ``comparison.json`` (runs, notes)."""
        folder = make_folder(folder, "folder")
        for name, frame in self.tables.items():
            write_table(frame, folder / name)
        write_json(folder / "comparison.json", {"runs": self.runs, "notes": self.notes})
        return folder


def compare(runs: Mapping[str, RunResult | str | Path], *, n_boot: int = 1000, seed: int = 0,
            alpha: float = 0.05, lens: str | None = None) -> Comparison:
    """Align runs of several checkpoints on their common samples and test their differences pairwise.

    Args:
        runs: Name -> a :class:`~vlm_lens.runs.RunResult` or a run folder; the first is the reference.
        n_boot, seed: Bootstrap resamples and seed for the correlation intervals and paired differences.
        alpha: The level below which a Holm-adjusted p-value counts as significant (the ``significant`` table).
        lens: The lens the per-layer readings must have been read through in every run: ``"logit"`` or ``"tuned"``
            (each run with its own checkpoint's tuned lens). None: whichever the runs used, when they agree (when
            they do not, the per-layer tables are left out, with a note).

    Returns:
        A :class:`Comparison`.

    Example:
        >>> vl.compare({"a": run_a, "b": run_b})["layer_differences"].query("p < 0.05")   # doctest: +SKIP
    """
    if lens is not None and lens not in LENS_KINDS:
        raise VlmLensError(f"lens={lens!r}: expected one of {', '.join(map(repr, LENS_KINDS))} (the kind of lens the "
                           "runs' per-layer readings were read through), or None for whichever they used.")
    if not isinstance(runs, Mapping) or len(runs) < 2:
        raise VlmLensError(f"compare() needs a mapping of at least two named runs, e.g. {{'one-stage': 'runs/a', "
                           f"'two-stage': 'runs/b'}}; got {type(runs).__name__} of length "
                           f"{len(runs) if hasattr(runs, '__len__') else '?'}.")
    n_boot, seed = as_int(n_boot, "n_boot", minimum=0), as_int(seed, "seed")
    alpha = as_number(alpha, "alpha")
    if not 0 < alpha < 1:
        raise VlmLensError(f"alpha={alpha!r}: expected a significance level between 0 and 1, e.g. 0.05.")
    loaded = {str(name): _run_of(name, r) for name, r in runs.items()}
    if len(loaded) < len(runs):
        raise VlmLensError(f"compare(): run names {list(runs)} repeat once made strings; give each run its own name.")
    loaded = {name: RunResult(upgrade(r.tables), r.skipped, r.meta, r.folder) for name, r in loaded.items()}
    names = list(loaded)
    out = Comparison(names)
    directions = {r.meta["dataset"]["higher_is_better"] for r in loaded.values()}
    if len(directions) > 1:
        raise VlmLensError("the runs were made on datasets with different score directions (higher_is_better); "
                           "compare runs on the same dataset.")
    higher_is_better = directions.pop()
    if len({r.meta["dataset"]["fingerprint"] for r in loaded.values()}) > 1:
        out.notes.append("the runs' datasets differ; tables use the sample ids all runs share.")
    common = _common_ids(loaded, out.notes)
    if _shared(loaded, "quality.samples", out.notes):
        _quality(loaded, common, higher_is_better, n_boot, seed, out)
    if _shared(loaded, "quality.layer_samples", out.notes) and _same_lens(loaded, lens, out.notes):
        _layers(loaded, common, out)
        if all("first_top1" in r["quality.samples"].columns for r in loaded.values()):
            _first_top1(loaded, common, out)
    for name in _attention_analyses(loaded):
        if _shared(loaded, f"{name}.samples", out.notes):
            _attention(loaded, common, out, name)
    if _shared(loaded, "instability.samples", out.notes):
        _instability(loaded, common, out)
    for analysis in EFFECT_TABLES:
        if _shared(loaded, f"{analysis}.samples", out.notes):
            out.tables.update(compare_effects(loaded, common, analysis))
    for table, frame in out.tables.items():
        if table.endswith("_differences") and "p" in frame.columns:
            out.tables[table] = frame.assign(p_adjusted=holm(frame["p"].to_numpy(float)))
    out.tables["significant"] = _significant(out.tables, alpha)
    return out


def _lens_of(run: RunResult) -> str | None:
    """The kind of lens a run's quality analysis read its layers through (None without per-layer readings)."""
    config = next((a["config"] for a in run.meta.get("analyses", []) if a.get("name") == "quality"), {})
    chosen = config.get("lens", True)
    return chosen.get("kind") if isinstance(chosen, dict) else ("logit" if chosen else None)


def _same_lens(runs: dict[str, RunResult], lens: str | None, notes: list[str]) -> bool:
    """Whether the runs' per-layer readings can be compared (one kind of lens, ``lens`` when given)."""
    kinds = {name: _lens_of(r) for name, r in runs.items()}
    if lens is not None and any(kind != lens for kind in kinds.values()):
        other = {name: kind for name, kind in kinds.items() if kind != lens}
        raise VlmLensError(f"lens={lens!r}: the per-layer readings of {other} were read through another lens; run "
                           f"those checkpoints again with Quality(lens=...) ({lens} lens), or compare with lens=None.")
    if len(set(kinds.values())) > 1:
        notes.append(f"the runs read their layers through different lenses ({kinds}); per-layer tables are left out.")
        return False
    kind = next(iter(kinds.values()))
    if kind not in (None, "logit"):
        notes.append(f"per-layer tables read through each run's own {kind} lens.")
    return True


def _run_of(name: Any, run: Any) -> RunResult:
    """``runs[name]`` as a :class:`RunResult` (a run folder is read)."""
    if isinstance(run, RunResult):
        return run
    if not isinstance(run, (str, os.PathLike)):
        raise VlmLensError(f"runs[{name!r}]={shown(run)}: expected a RunResult (from vl.run) or a run folder (the out= "
                           f"of vl.run, a str or Path), got {type(run).__name__}.")
    return RunResult.load(run)


def _attention_analyses(runs: dict[str, RunResult]) -> list[str]:
    """The table prefixes of the reference run's attention analyses (``attention`` first, then named ones)."""
    reference = next(iter(runs.values()))
    named = [a.get("name") for a in reference.meta.get("analyses", []) if a.get("class") == "Attention"]
    found = [n for n in named if n and f"{n}.samples" in reference.tables]
    if not found and "attention.samples" in reference.tables:
        found = ["attention"]
    return sorted(found, key=lambda n: (n != "attention", n))


def _significant(tables: dict[str, pd.DataFrame], alpha: float) -> pd.DataFrame:
    """Every difference of every ``*_differences`` table whose Holm-adjusted p-value is below ``alpha``."""
    rows = []
    for table, frame in tables.items():
        if not table.endswith("_differences") or "p_adjusted" not in frame.columns:
            continue
        for r in frame[frame["p_adjusted"] < alpha].to_dict("records"):
            rows.append({"table": table, "what": _what(table, r), "a": r["a"], "b": r["b"],
                         "value_a": r.get("value_a", r.get("mean_a", r.get("mass_a", np.nan))),
                         "value_b": r.get("value_b", r.get("mean_b", r.get("mass_b", np.nan))),
                         "diff": r["diff"], "p": r["p"], "p_adjusted": r["p_adjusted"],
                         "test": r.get("test", "paired bootstrap" if table == "correlation_differences" else
                                       "wilcoxon"), "n": r["n"]})
    return pd.DataFrame(rows, columns=SIGNIFICANT_COLUMNS)


def _what(table: str, row: dict[str, Any]) -> str:
    """A difference in words: ``"layer 3, image"``, ``"qalign srcc"``, ``"level_agree at layer 2"``."""
    if table == "correlation_differences":
        return f"{row['score']} {row['metric']}"
    if table == "layer_differences":
        return f"{row['quantity']} at layer {row['layer']}"
    if "segment" in row:
        return f"layer {row['layer']}, {row['segment']}"
    return str(row.get("quantity", table))


def _shared(runs: dict[str, RunResult], table: str, notes: list[str]) -> bool:
    """Whether every run has ``table`` (noted when only some do)."""
    missing = [name for name, r in runs.items() if table not in r.tables]
    if missing and len(missing) < len(runs):
        notes.append(f"{table} is missing from {missing}; its comparison is left out.")
    return not missing


def _common_ids(runs: dict[str, RunResult], notes: list[str]) -> list[str]:
    """Ids analysed by every run (in the reference's order), from the first per-sample table each run has."""
    per_run = {}
    for name, r in runs.items():
        table = next((r.tables[t] for t in ("quality.samples", "attention.samples", "instability.samples",
                                            "grounding.samples", "knockout.samples", "patching.samples")
                      if t in r.tables), None)
        per_run[name] = list(dict.fromkeys(table["id"].astype(str))) if table is not None else []
    reference = per_run[next(iter(runs))]
    shared = set.intersection(*(set(ids) for ids in per_run.values()))
    common = [i for i in reference if i in shared]
    dropped = {name: len(ids) - len(common) for name, ids in per_run.items() if len(ids) != len(common)}
    if dropped:
        notes.append(f"aligned on {len(common)} samples every run analysed; left out per run: {dropped}.")
    if not common:
        raise VlmLensError("the runs have no analysed sample in common (aligned on sample id); compare runs of the "
                           "same dataset.")
    return common


def _aligned(frame: pd.DataFrame, common: list[str], keys: list[str]) -> pd.DataFrame:
    frame = frame.assign(id=frame["id"].astype(str))
    frame = frame[frame["id"].isin(set(common))]
    order = {i: k for k, i in enumerate(common)}
    return frame.assign(_order=frame["id"].map(order)).sort_values(["_order", *keys], kind="stable") \
        .drop(columns="_order").reset_index(drop=True)


def _quality(runs: dict[str, RunResult], common: list[str], higher_is_better: bool, n_boot: int, seed: int,
             out: Comparison) -> None:
    samples = {name: _aligned(r["quality.samples"], common, []) for name, r in runs.items()}
    columns = ["id", "mos", "score", "good_poor", "level", "first_top1"]
    out.tables["samples"] = pd.concat([s.reindex(columns=columns).assign(run=name) for name, s in samples.items()],
                                      ignore_index=True)[["run", *columns]]
    reference = next(iter(runs))
    mos = samples[reference]["mos"].to_numpy(float)
    if not np.isfinite(mos).all():
        out.notes.append("the dataset has no (or incomplete) MOS; correlations are left out.")
        return
    rows, diffs = [], []
    for name, s in samples.items():
        for score, column in (("qalign", "score"), ("good_poor", "good_poor")):
            table = correlations(s[column].to_numpy(float), mos, higher_is_better=higher_is_better,
                                 n_boot=n_boot, seed=seed)
            rows.append(table.assign(run=name, score=score))
            if name != reference:
                paired = paired_correlations(samples[reference][column].to_numpy(float), s[column].to_numpy(float),
                                             mos, higher_is_better=higher_is_better, n_boot=n_boot, seed=seed)
                diffs.append(paired.assign(a=reference, b=name, score=score))
    out.tables["correlations"] = pd.concat(rows, ignore_index=True)[
        ["run", "score", "metric", "value", "low", "high", "n"]]
    out.tables["correlation_differences"] = pd.concat(diffs, ignore_index=True)[
        ["a", "b", "score", "metric", "diff", "low", "high", "p", "n"]]


def _layers(runs: dict[str, RunResult], common: list[str], out: Comparison) -> None:
    tables = {name: _aligned(r["quality.layer_samples"], common, ["layer"]) for name, r in runs.items()}
    lens = [q for q in _LENS if all(q in t.columns for t in tables.values())]  # runs of earlier versions lack some
    layer_sets = [set(t["layer"]) for t in tables.values()]
    layers = sorted(set.intersection(*layer_sets))
    if any(s != set(layers) for s in layer_sets):
        out.notes.append(f"the runs have different layers; per-layer tables use the {len(layers)} they share.")
    rows, diffs = [], []
    reference = next(iter(runs))
    for name, t in tables.items():
        t = t[t["layer"].isin(layers)].astype({c: float for c in lens})
        means = t.groupby("layer", sort=True)[lens].mean()
        rows.append(means.assign(n=t.groupby("layer").size(), run=name).reset_index())
        tables[name] = t
    for name in list(tables)[1:]:
        for layer in layers:
            a, b = (_by_id(tables[reference], layer), _by_id(tables[name], layer))
            both = a.index.intersection(b.index)
            for quantity in lens:
                x, y = a.loc[both, quantity].to_numpy(float), b.loc[both, quantity].to_numpy(float)
                binary = quantity in _BINARY
                diffs.append({"a": reference, "b": name, "layer": layer, "quantity": quantity,
                              "mean_a": x.mean(), "mean_b": y.mean(), "diff": y.mean() - x.mean(),
                              "p": mcnemar(x > 0.5, y > 0.5) if binary else wilcoxon(x, y),
                              "test": "mcnemar" if binary else "wilcoxon", "n": len(both)})
    out.tables["layers"] = pd.concat(rows, ignore_index=True)[["run", "layer", *lens, "n"]]
    out.tables["layer_differences"] = pd.DataFrame(diffs)


def _first_top1(runs: dict[str, RunResult], common: list[str], out: Comparison) -> None:
    """The layer where the level first becomes the lens's top-1: its distribution per run, and the paired shift."""
    samples = {name: _aligned(r["quality.samples"], common, []).set_index("id") for name, r in runs.items()}
    rows = []
    for name, s in samples.items():
        with_level = s[s["score"].notna()]
        counts = with_level["first_top1"].astype("Int64").value_counts(dropna=False)
        total = max(len(with_level), 1)
        for layer, n in sorted(counts.items(), key=lambda item: (pd.isna(item[0]), item[0] if not pd.isna(item[0])
                                                                 else 0)):
            rows.append({"run": name, "layer": layer, "n": int(n), "share": int(n) / total})
    table = pd.DataFrame(rows, columns=["run", "layer", "n", "share"])
    out.tables["first_top1"] = table.astype({"layer": "Int64"})
    reference, diffs = next(iter(samples)), []
    a = samples[reference]
    for name in list(samples)[1:]:
        b = samples[name].loc[a.index]
        x, y = a["first_top1"].to_numpy(float), b["first_top1"].to_numpy(float)
        both = np.isfinite(x) & np.isfinite(y)
        with_a, with_b = a["score"].notna().to_numpy(), b["score"].notna().to_numpy()
        diffs.append({"a": reference, "b": name, "mean_a": x[both].mean() if both.any() else np.nan,
                      "mean_b": y[both].mean() if both.any() else np.nan,
                      "diff": (y[both] - x[both]).mean() if both.any() else np.nan,
                      "p": wilcoxon(x[both], y[both]), "test": "wilcoxon", "n": int(both.sum()),
                      "never_a": int((with_a & ~np.isfinite(x)).sum()),
                      "never_b": int((with_b & ~np.isfinite(y)).sum())})
    out.tables["first_top1_differences"] = pd.DataFrame(diffs)


def _by_id(table: pd.DataFrame, layer: int) -> pd.DataFrame:
    return table[table["layer"] == layer].set_index("id")


def _attention(runs: dict[str, RunResult], common: list[str], out: Comparison, analysis: str = "attention") -> None:
    tables = {name: _aligned(r[f"{analysis}.samples"], common, ["layer"]) for name, r in runs.items()}
    rows, diffs = [], []
    reference = next(iter(runs))
    for name, t in tables.items():
        for (layer, segment), group in t.groupby(["layer", "segment"], sort=True):
            mean, low, high = mean_interval(group["mass"].to_numpy(float))
            rows.append({"run": name, "layer": layer, "segment": segment, "mass": mean, "low": low, "high": high,
                         "n": len(group)})
    for name in list(tables)[1:]:
        merged = tables[reference].merge(tables[name], on=["id", "layer", "segment"], suffixes=("_a", "_b"))
        for (layer, segment), group in merged.groupby(["layer", "segment"], sort=True):
            x, y = group["mass_a"].to_numpy(float), group["mass_b"].to_numpy(float)
            diffs.append({"a": reference, "b": name, "layer": layer, "segment": segment, "mass_a": x.mean(),
                          "mass_b": y.mean(), "diff": y.mean() - x.mean(), "p": wilcoxon(x, y), "test": "wilcoxon",
                          "n": len(group)})
    out.tables[analysis] = pd.DataFrame(rows, columns=["run", "layer", "segment", "mass", "low", "high", "n"])
    out.tables[f"{analysis}_differences"] = pd.DataFrame(diffs)


def _instability(runs: dict[str, RunResult], common: list[str], out: Comparison) -> None:
    tables = {name: _aligned(r["instability.samples"], common, []).set_index("id") for name, r in runs.items()}
    rows, diffs = [], []
    reference = next(iter(runs))
    for name, t in tables.items():
        compared = t["changed"].dropna().astype(bool)
        low, high = wilson(int(compared.sum()), len(compared))
        rows.append({"run": name, "pct_changed": 100.0 * compared.mean() if len(compared) else np.nan,
                     "pct_changed_low": 100.0 * low, "pct_changed_high": 100.0 * high,
                     "mean_entropy_bits": t["entropy_bits"].astype(float).mean(), "n": len(compared)})
    a = tables[reference]
    for name in list(tables)[1:]:
        b = tables[name]
        both = a.index[a["changed"].notna() & b.loc[a.index, "changed"].notna()]
        x, y = a.loc[both, "changed"].astype(bool).to_numpy(), b.loc[both, "changed"].astype(bool).to_numpy()
        diffs.append(_difference(reference, name, "pct_changed", 100.0 * x.mean() if len(x) else np.nan,
                                 100.0 * y.mean() if len(y) else np.nan, mcnemar(x, y), "mcnemar", len(both)))
        ea, eb = a["entropy_bits"].astype(float), b.loc[a.index, "entropy_bits"].astype(float)
        n = int((ea.notna() & eb.notna()).sum())
        diffs.append(_difference(reference, name, "entropy_bits", ea.mean(), eb.mean(),
                                 wilcoxon(ea.to_numpy(), eb.to_numpy()), "wilcoxon", n))
    out.tables["instability"] = pd.DataFrame(rows)
    out.tables["instability_differences"] = pd.DataFrame(diffs)


def _difference(a: str, b: str, quantity: str, value_a: float, value_b: float, p: float, test: str,
                n: int) -> dict[str, Any]:
    return {"a": a, "b": b, "quantity": quantity, "value_a": value_a, "value_b": value_b,
            "diff": value_b - value_a, "p": p, "test": test, "n": n}
