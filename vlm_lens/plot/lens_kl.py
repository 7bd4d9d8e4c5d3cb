"""How far each layer's lens reading is from the model's output: KL per layer, logit lens vs tuned lens.

Before reading "the answer surfaces at layer l" off a latent-output heatmap, look at how far the lens itself is from
the output at layer l. This figure draws ``KL(model output || lens_l)`` (nats, mean over held-out positions) per hidden
index for the logit lens and the tuned lens, on a log scale (a tuned lens is often ten times closer); one panel per
checkpoint, panels on one scale. The last hidden index reads through the model's own head in both lenses, so its KL
is 0 by construction and is not drawn.

It reads results, never computes them: a :class:`~vlm_lens.TunedLens` (its held-out table, measured when it was
fitted), or the ``layers`` table of the lens-KL analysis (:class:`~vlm_lens.runs.lens_kl.LensKL`).

Example:
    >>> fig = vl.plot.lens_kl({"one-stage": lens_one, "two-stage": lens_two})      # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd

from ..core.errors import VlmLensError
from .style import HIGHLIGHT, new_figure, save, style, thin_ticks

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["draw_lens_kl", "lens_kl", "lens_kl_table"]

#: Colour of the logit lens's line (the tuned lens is drawn in the highlight colour).
LOGIT_COLOR = "#5b5b5b"


def lens_kl_table(source: Any) -> pd.DataFrame:
    """``layer, logit, tuned`` from a tuned lens (its held-out KL) or a table with ``layer, logit`` and ``tuned``
    (or ``lens``, as the lens-KL analysis names it).

    Raises:
        VlmLensError: ``source`` is neither, or holds no measurement (a lens fitted with ``held_out=0``).
    """
    table = getattr(source, "held_out", source)
    if not isinstance(table, pd.DataFrame):
        raise VlmLensError(f"expected a TunedLens or a table with columns layer, logit, tuned; got "
                           f"{type(source).__name__}.")
    if "tuned" not in table.columns and "lens" in table.columns:
        table = table.rename(columns={"lens": "tuned"})
    missing = [c for c in ("layer", "logit", "tuned") if c not in table.columns]
    if missing:
        raise VlmLensError(f"the KL table lacks columns {missing} (it has {list(table.columns)}); expected layer, "
                           "logit, tuned.")
    if not len(table):
        raise VlmLensError("the KL table is empty: the lens was fitted without held-out samples (held_out=0); "
                           "measure it with vl.run(model, dataset, [LensKL(lens)]).")
    return table[["layer", "logit", "tuned"]].sort_values("layer").reset_index(drop=True)


def lens_kl(source: Any, *, path: str | Path | None = None) -> "Figure":
    """KL to the model's output per hidden index, logit lens vs tuned lens.

    Args:
        source: A :class:`~vlm_lens.TunedLens`, a ``layer, logit, tuned`` table, or a mapping name -> either of them
            (one panel per name, on one scale).
        path: Also save the figure there.

    Returns:
        The Figure; each panel's Axes is labelled ``"lens_kl:<name>"`` (``"lens_kl"`` for a single source) and holds
        two lines labelled ``"logit lens"`` and ``"tuned lens"``.

    Example:
        >>> fig = lens_kl(lens, path="kl.png")                                  # doctest: +SKIP
    """
    sources = dict(source) if isinstance(source, Mapping) else {"": source}
    if not sources:
        raise VlmLensError("lens_kl: expected a lens, a table, or a non-empty mapping of them.")
    tables = {str(name): lens_kl_table(s) for name, s in sources.items()}
    shown = [t[t["layer"] < t["layer"].max()] for t in tables.values()]
    values = np.concatenate([t[["logit", "tuned"]].to_numpy(float).ravel() for t in shown])
    positive = values[values > 0]
    ylim = (float(positive.min()) / 1.6, float(positive.max()) * 1.6) if positive.size else None
    with style():
        fig = new_figure(1.0 + 3.6 * len(tables), 3.1)
        axes = fig.subplots(1, len(tables), squeeze=False, sharey=True)[0]
        for ax, (name, table) in zip(axes, tables.items()):
            draw_lens_kl(ax, table, ylim=ylim)
            ax.set_label(f"lens_kl:{name}" if name else "lens_kl")
            ax.set_title(_title(name, table))
        for ax in axes[1:]:
            ax.set_ylabel("")
    if path is not None:
        save(fig, path)
    return fig


def draw_lens_kl(ax: "Axes", table: pd.DataFrame, *, ylim: tuple[float, float] | None = None) -> None:
    """Draw a ``layer, logit, tuned`` table (hidden indices below the last) on a log axis, one line per lens."""
    table = table[table["layer"] < table["layer"].max()]
    ax.plot(table["layer"], table["logit"], marker="o", markersize=3, linewidth=1.4, linestyle="--",
            color=LOGIT_COLOR, label="logit lens")
    ax.plot(table["layer"], table["tuned"], marker="o", markersize=3, linewidth=1.6, color=HIGHLIGHT,
            label="tuned lens")
    ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    layers = table["layer"].tolist()
    ticks = thin_ticks(len(layers), 17)
    ax.set_xticks([layers[i] for i in ticks], [str(layers[i]) for i in ticks])
    ax.set_xlabel("hidden index (0 = decoder input)")
    ax.set_ylabel("KL to the model's output (nats)")
    ax.grid(axis="y", which="both", color="#eeeeee", linewidth=0.6)
    ax.legend(frameon=False, loc="lower left")


def _title(name: str, table: pd.DataFrame) -> str:
    below = table[table["layer"] < table["layer"].max()]
    logit, tuned = float(below["logit"].mean()), float(below["tuned"].mean())
    ratio = f" ({tuned / logit:.2f}x)" if logit > 0 else ""
    head = f"{name}\n" if name else ""
    return f"{head}mean KL: logit {logit:.3f}, tuned {tuned:.3f}{ratio}"
