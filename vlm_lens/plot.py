"""Figures drawn from results. Plotting reads Traces and tables; it never computes model outputs itself.

Example:
    >>> fig = vl.plot.latent_output(t)            # layers x positions, top-1 lens token written in  # doctest: +SKIP
    >>> fig.savefig("latent.png")                                                                  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .trace_result import Trace

__all__ = ["latent_output"]


def latent_output(trace: "Trace", *, positions: Sequence[int] | None = None, layers: Sequence[int] | None = None,
                  max_label: int = 8) -> "Figure":
    """Latent-output heatmap: for each layer (rows) and position (columns), the logit lens's top-1 token written
    in its cell, coloured by its probability.

    Args:
        trace: A Trace with a model attached.
        positions: Sequence positions (default: the query positions).
        layers: Hidden-state indices (default: all kept).
        max_label: Longest token text shown in a cell; longer texts are elided with "…".

    Returns:
        The matplotlib Figure.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    table = trace.lens(topk=1, positions=positions, layers=layers)
    layer_ids = sorted(table.layer.unique())
    pos_ids = list(dict.fromkeys(table.pos.tolist()))
    grid = table.pivot(index="layer", columns="pos", values="prob").loc[layer_ids, pos_ids]
    words = table.pivot(index="layer", columns="pos", values="token").loc[layer_ids, pos_ids]
    width = min(2 + 0.9 * len(pos_ids), 40)
    height = min(1.5 + 0.35 * len(layer_ids), 30)
    fig, ax = plt.subplots(figsize=(width, height), constrained_layout=True)
    image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
    for i in range(len(layer_ids)):
        for j in range(len(pos_ids)):
            p = float(grid.iat[i, j])
            ax.text(j, i, _elide(str(words.iat[i, j]), max_label), ha="center", va="center", fontsize=7,
                    color="black" if p > 0.6 else "white")
    texts = trace.tokens.set_index("pos").loc[pos_ids, "text"].tolist()
    ax.set_xticks(np.arange(len(pos_ids)), [f"{p}:{_elide(t, max_label)}" for p, t in zip(pos_ids, texts)],
                  rotation=60, ha="right", fontsize=7)
    ax.set_yticks(np.arange(len(layer_ids)), [str(l) for l in layer_ids], fontsize=7)
    ax.set_xlabel("position: input token")
    ax.set_ylabel("layer (0 = decoder input)")
    ax.set_title("logit lens: top-1 token per layer")
    fig.colorbar(image, ax=ax, label="probability of the top-1 token")
    return fig


def _elide(text: str, limit: int) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"
