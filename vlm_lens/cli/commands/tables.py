"""How the dataset commands print their tables: correlations with intervals, and what was written."""

from __future__ import annotations

from pathlib import Path

__all__ = ["METRIC_NAMES", "correlations_text", "written"]


METRIC_NAMES = {"srcc": "SRCC", "plcc": "PLCC", "plcc_logistic": "PLCC (logistic)"}


def correlations_text(frame, keys: list[str], higher_is_better: bool = True) -> str:
    """One row per ``keys`` and one column per metric, each ``value [low, high]`` (the bootstrap interval)."""
    import math

    cells = [f"{v:.4f}" + ("" if math.isnan(lo) or math.isnan(hi) else f" [{lo:.4f}, {hi:.4f}]")
             for v, lo, hi in zip(frame["value"], frame["low"].astype(float), frame["high"].astype(float))]
    wide = frame.assign(cell=cells).pivot(index=keys, columns="metric", values="cell")
    order = list(dict.fromkeys(frame[keys].itertuples(index=False, name=None)))  # as given, not sorted
    wide = wide.loc[order if len(keys) > 1 else [key for key, in order], list(dict.fromkeys(frame["metric"]))]
    wide["n"] = frame.groupby(keys, sort=False)["n"].first()
    said = [] if higher_is_better else ["DMOS: taken against -score"]
    said.append("value [95% bootstrap interval]" if frame["low"].notna().any() else "no intervals")
    return (f"correlations with the scores ({'; '.join(said)}):\n"
            + wide.rename(columns=METRIC_NAMES).reset_index().to_string(index=False))


def written(tables: dict, folder: Path, also: str) -> str:
    width = max(map(len, tables), default=0)
    rows = [f"  {name:<{width}}  {len(frame):>7} rows" for name, frame in sorted(tables.items())]
    return f"wrote {len(tables)} tables to {folder} (each .parquet + .csv; and {also}):\n" + "\n".join(rows)
