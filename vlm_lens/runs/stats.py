"""Correlations of predicted quality with subjective scores, with seeded bootstrap intervals, and paired tests.

The IQA literature reports three numbers, and small differences in how they are computed move them:

- **SRCC**: Spearman's rank correlation (Pearson's correlation of the ranks, ties averaged, as
  ``scipy.stats.spearmanr``).
- **PLCC**: Pearson's linear correlation of the raw predictions.
- **PLCC (logistic)**: Pearson's correlation after mapping predictions through the 4-parameter logistic of the
  VQEG FR-TV Phase I report, ``f(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2``, fitted by least squares
  (``scipy.optimize.curve_fit``, start ``b1 = max(y), b2 = min(y), b3 = mean(x), b4 = std(x)``). The fit
  straightens a monotone but non-linear relation before Pearson's correlation is taken.

For DMOS sets (lower = better) correlations are computed against ``-score``, so a model that ranks images well
gets a positive correlation on every set (``higher_is_better=False``).

Confidence intervals are percentile bootstraps over samples (``n_boot`` resamples with replacement, drawn from
``numpy.random.default_rng(seed)``; the logistic is refitted in every resample). Comparisons of two models on
the same samples resample the *same* indices for both (paired bootstrap). Per-sample paired quantities use the
Wilcoxon signed-rank test, paired binary outcomes McNemar's exact test. A table of many such tests (one per layer
and segment, say) is corrected for multiple comparisons by Holm's step-down method (:func:`holm`): it controls the
chance of any false positive among the table's tests, without assuming they are independent.

Shares (of samples whose level changes, of layers that agree) get Wilson score intervals (:func:`wilson`), means
over samples Student-t intervals (:func:`mean_interval`).

Example:
    >>> import numpy as np
    >>> x = np.arange(20.0); y = x ** 2
    >>> table = correlations(x, y, n_boot=50)
    >>> float(table.set_index("metric").loc["srcc", "value"])
    1.0
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import pandas as pd

__all__ = ["correlations", "fit_logistic4", "holm", "logistic4", "mcnemar", "mean_interval", "paired_correlations",
           "plcc", "plcc_logistic", "sigmoid", "srcc", "wilcoxon", "wilson"]

METRICS = ("srcc", "plcc", "plcc_logistic")


def srcc(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation: Pearson's correlation of the ranks, ties averaged (as
    ``scipy.stats.spearmanr``); NaN when either side is constant or there are fewer than 3 samples."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return plcc(rankdata(x), rankdata(y))


def plcc(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson linear correlation (NaN when either side is constant or there are fewer than 3 samples)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    return float(np.clip((dx @ dy) / np.sqrt((dx @ dx) * (dy @ dy)), -1.0, 1.0))


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The VQEG 4-parameter logistic ``(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2``."""
    return (b1 - b2) * sigmoid((np.asarray(x, float) - b3) / max(abs(b4), 1e-12)) + b2


def sigmoid(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-z))``, computed as ``(1 + tanh(z / 2)) / 2`` so that it never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _logistic4_jacobian(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    return _logistic4_jacobian_rows(np.asarray(x, float)[None], np.array([[b1, b2, b3, b4]]))[0]


def fit_logistic4(x: np.ndarray, y: np.ndarray, start: np.ndarray | None = None) -> np.ndarray | None:
    """Least-squares parameters ``[b1, b2, b3, b4]`` of :func:`logistic4`, or None when the fit fails.

    ``start`` defaults to ``[max(y), min(y), mean(x), std(x)]``; bootstrap refits start from the full fit.
    """
    from scipy.optimize import curve_fit

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    if start is None:
        start = np.array([y.max(), y.min(), x.mean(), x.std() or 1.0])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = curve_fit(logistic4, x, y, p0=start, jac=_logistic4_jacobian, maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    return params if np.all(np.isfinite(params)) else None


def plcc_logistic(x: np.ndarray, y: np.ndarray, start: np.ndarray | None = None) -> float:
    """PLCC after the 4-parameter logistic fit of ``x`` to ``y`` (NaN when the fit fails)."""
    params = fit_logistic4(x, y, start)
    return float("nan") if params is None else plcc(logistic4(x, *params), y)


def _plcc_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of ``[B, n]`` arrays (NaN for constant rows)."""
    dx, dy = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    den = np.sqrt((dx * dx).sum(1) * (dy * dy).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (dx * dy).sum(1) / den
    r[~(den > 0)] = np.nan
    if x.shape[1] < 3:
        r[:] = np.nan
    return np.clip(r, -1.0, 1.0)


def _srcc_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return _plcc_rows(rankdata(x, axis=1), rankdata(y, axis=1))


def _fit_logistic4_rows(x: np.ndarray, y: np.ndarray, start: np.ndarray, iterations: int = 100) -> np.ndarray:
    """:func:`fit_logistic4` of every row of ``[B, n]`` arrays at once: Levenberg-Marquardt from ``start`` with
    the analytic Jacobian, vectorised over rows (a bootstrap refits 1000 resamples in the time scipy fits a few).
    A row stops when a step improves its squared error by less than 1e-9 (relative) or no step improves it."""
    p = np.tile(np.asarray(start, float), (len(x), 1))
    damping = np.full(len(x), 1e-3)
    cost = ((y - _logistic_rows(x, p)) ** 2).sum(1)
    active = np.isfinite(cost)
    for _ in range(iterations):
        rows = np.flatnonzero(active)
        if not len(rows):
            break
        q, xa, ya = p[rows], x[rows], y[rows]
        jac = _logistic4_jacobian_rows(xa, q)
        a = np.einsum("bni,bnj->bij", jac, jac)
        g = np.einsum("bni,bn->bi", jac, ya - _logistic_rows(xa, q))
        diag = np.einsum("bii->bi", a)
        ridge = damping[rows, None] * diag + 1e-12 * (diag.mean(1, keepdims=True) + 1e-12)
        try:
            step = np.linalg.solve(a + ridge[:, :, None] * np.eye(4), g[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            step = np.stack([np.linalg.lstsq(m + np.diag(r), v, rcond=None)[0] for m, r, v in zip(a, ridge, g)])
        trial = q + step
        new_cost = ((ya - _logistic_rows(xa, trial)) ** 2).sum(1)
        better = np.isfinite(new_cost) & (new_cost < cost[rows])
        converged = better & (cost[rows] - new_cost <= 1e-9 * cost[rows] + 1e-300)
        p[rows[better]], cost[rows[better]] = trial[better], new_cost[better]
        damping[rows] = np.where(better, damping[rows] / 3.0, damping[rows] * 4.0)
        active[rows[converged | (damping[rows] > 1e10)]] = False
    p[~np.isfinite(cost)] = np.nan
    return p


def _logistic4_jacobian_rows(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``[B, n, 4]`` Jacobian of :func:`_logistic_rows` with respect to ``p``."""
    scale = np.maximum(np.abs(p[:, 3:4]), 1e-12)
    s = sigmoid((x - p[:, 2:3]) / scale)
    slope = (p[:, 0:1] - p[:, 1:2]) * s * (1.0 - s) / scale
    sign = np.where(p[:, 3:4] >= 0, 1.0, -1.0)
    return np.stack([s, 1.0 - s, -slope, -slope * (x - p[:, 2:3]) / scale * sign], -1)


def _logistic_rows(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    scale = np.maximum(np.abs(p[:, 3:4]), 1e-12)
    return (p[:, 0:1] - p[:, 1:2]) * sigmoid((x - p[:, 2:3]) / scale) + p[:, 1:2]


def _metric(name: str, x: np.ndarray, y: np.ndarray) -> tuple[float, Callable[[np.ndarray], np.ndarray]]:
    """The metric on all samples, and a function computing it on ``[B, n]`` resampled indices at once (logistic
    refits start from the full-data fit)."""
    if name == "plcc_logistic":
        params = fit_logistic4(x, y)
        if params is None:
            return float("nan"), lambda i: np.full(len(i), np.nan)
        return plcc(logistic4(x, *params), y), \
            lambda i: _plcc_rows(_logistic_rows(x[i], _fit_logistic4_rows(x[i], y[i], params)), y[i])
    pair = {"srcc": (srcc, _srcc_rows), "plcc": (plcc, _plcc_rows)}.get(name)
    if pair is None:
        from ..core.errors import VlmLensError

        raise VlmLensError(f"metric {name!r}: expected one of {METRICS}.")
    return pair[0](x, y), lambda i: pair[1](x[i], y[i])


#: Resampled indices are drawn and evaluated in blocks of at most this many elements (resamples x samples), so a
#: bootstrap over thousands of samples keeps its arrays well under a MiB each.
BLOCK_ELEMENTS = 2 ** 14


def _resample(seed: int, n: int, n_boot: int) -> list[np.ndarray]:
    """``n_boot`` resamples of ``range(n)`` with replacement, as ``[block, n]`` index blocks (same for any metric)."""
    rng = np.random.default_rng(seed)
    block = max(1, BLOCK_ELEMENTS // max(n, 1))
    return [rng.integers(0, n, (min(block, n_boot - start), n)) for start in range(0, n_boot if n else 0, block)]


def _target(mos: np.ndarray, higher_is_better: bool) -> np.ndarray:
    mos = np.asarray(mos, float)
    return mos if higher_is_better else -mos


def _interval(values: np.ndarray, ci: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    alpha = (1.0 - ci) / 2.0
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha))


def _check(pred: np.ndarray, mos: np.ndarray, ci: float, n_boot: int) -> None:
    from ..core.errors import VlmLensError

    if len(pred) != len(mos):
        raise VlmLensError(f"{len(pred)} predictions for {len(mos)} scores; pass one prediction per score.")
    if not 0 < ci < 1 or n_boot < 0:
        raise VlmLensError(f"ci={ci}, n_boot={n_boot}: expected 0 < ci < 1 and n_boot >= 0.")


def correlations(pred: np.ndarray, mos: np.ndarray, *, higher_is_better: bool = True, n_boot: int = 1000,
                 ci: float = 0.95, seed: int = 0, metrics: tuple[str, ...] = METRICS) -> pd.DataFrame:
    """SRCC, PLCC and logistic PLCC of ``pred`` against ``mos`` with bootstrap confidence intervals.

    Samples where ``pred`` is NaN (e.g. no level was found) are left out and counted in ``n_missing``.

    Returns:
        DataFrame with columns ``metric, value, low, high, n, n_missing`` (``low``/``high``: the ``ci``
        percentile interval of ``n_boot`` resamples; NaN with ``n_boot=0``).
    """
    pred, mos = np.asarray(pred, float), np.asarray(mos, float)
    _check(pred, mos, ci, n_boot)
    keep = np.isfinite(pred) & np.isfinite(mos)
    x, y = pred[keep], _target(mos[keep], higher_is_better)
    rows = []
    for name in metrics:
        value, resampled = _metric(name, x, y)
        boot = np.concatenate([resampled(i) for i in _resample(seed, len(x), n_boot)] or [np.empty(0)])
        low, high = _interval(boot, ci) if n_boot else (float("nan"), float("nan"))
        rows.append({"metric": name, "value": value, "low": low, "high": high, "n": int(keep.sum()),
                     "n_missing": int((~keep).sum())})
    return pd.DataFrame(rows)


def paired_correlations(pred_a: np.ndarray, pred_b: np.ndarray, mos: np.ndarray, *, higher_is_better: bool = True,
                        n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
                        metrics: tuple[str, ...] = METRICS) -> pd.DataFrame:
    """Difference ``b - a`` of each correlation on the same samples, with a paired bootstrap.

    Both predictions are resampled with the same indices. ``p`` is the two-sided bootstrap p-value of "no
    difference": twice the smaller share of resampled differences on either side of 0 (at most 1).

    Returns:
        DataFrame with columns ``metric, a, b, diff, low, high, p, n``.
    """
    a, b, mos = np.asarray(pred_a, float), np.asarray(pred_b, float), np.asarray(mos, float)
    _check(a, mos, ci, n_boot)
    _check(b, mos, ci, n_boot)
    keep = np.isfinite(a) & np.isfinite(b) & np.isfinite(mos)
    a, b, y = a[keep], b[keep], _target(mos[keep], higher_is_better)
    rows = []
    for name in metrics:
        (value_a, resampled_a), (value_b, resampled_b) = _metric(name, a, y), _metric(name, b, y)
        diffs = np.concatenate([resampled_b(i) - resampled_a(i) for i in _resample(seed, len(y), n_boot)]
                               or [np.empty(0)])
        diffs = diffs[np.isfinite(diffs)]
        low, high = _interval(diffs, ci) if len(diffs) else (float("nan"), float("nan"))
        p = float(min(1.0, 2 * min((diffs <= 0).mean(), (diffs >= 0).mean()))) if len(diffs) else float("nan")
        rows.append({"metric": name, "a": value_a, "b": value_b, "diff": value_b - value_a, "low": low,
                     "high": high, "p": p, "n": int(keep.sum())})
    return pd.DataFrame(rows)


def wilcoxon(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value for paired samples (1.0 when every difference is 0; NaN when
    fewer than 2 finite pairs)."""
    from scipy.stats import wilcoxon as scipy_wilcoxon

    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(a) & np.isfinite(b)
    d = b[keep] - a[keep]
    if len(d) < 2:
        return float("nan")
    if np.all(d == 0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(scipy_wilcoxon(d, zero_method="zsplit").pvalue)


def mcnemar(a: np.ndarray, b: np.ndarray) -> float:
    """McNemar's exact two-sided p-value for paired booleans (1.0 when no pair disagrees)."""
    from scipy.stats import binomtest

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values of a family of tests (NaN p-values stay NaN and do not count).

    Sorted ascending, the ``i``-th smallest of ``m`` p-values is multiplied by ``m - i`` (``i`` from 0), the running
    maximum taken so the order is kept, and the result capped at 1. A test is significant at level ``alpha``
    after correction when its adjusted p-value is below ``alpha``.

    Example:
        >>> holm(np.array([0.01, 0.04, 0.03])).round(3).tolist()
        [0.03, 0.06, 0.06]
    """
    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if not len(finite):
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out[order] = np.minimum(adjusted, 1.0)
    return out


def wilson(successes: float, n: float, ci: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (NaN, NaN when ``n`` is 0).

    Example:
        >>> [round(x, 4) for x in wilson(8, 10)]
        [0.4902, 0.9433]
    """
    from scipy.stats import norm

    if not n:
        return float("nan"), float("nan")
    z = float(norm.ppf(0.5 + ci / 2))
    phat = successes / n
    centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(centre - half, 0.0)), float(min(centre + half, 1.0))


def mean_interval(values: np.ndarray, ci: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of the finite ``values`` and its Student-t interval (NaN bounds with fewer
    than two values).

    Example:
        >>> [round(x, 3) for x in mean_interval(np.array([1.0, 2.0, 3.0]))]
        [2.0, -0.484, 4.484]
    """
    from scipy.stats import t as student

    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(student.ppf(0.5 + ci / 2, len(values) - 1)) * float(values.std(ddof=1)) / np.sqrt(len(values))
    return mean, float(mean - half), float(mean + half)
