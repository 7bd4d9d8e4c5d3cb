"""Side-by-side panels of two results on one scale, and the difference panel: what every comparison figure shares.

Example:
    >>> import numpy as np
    >>> symmetric_norm(np.array([-0.2, 0.5])).vmin
    -0.5
"""

from __future__ import annotations

import numpy as np

from ..core.errors import VlmLensError
from .style import new_figure

__all__ = ["DIVERGING", "side_by_side", "symmetric_norm", "want_difference"]

#: Colour map of every difference panel (b - a): blue below zero, red above, white at zero.
DIVERGING = "RdBu_r"


def want_difference(difference: bool | str, aligned: bool, why: str, *, subject: str = "the two panels",
                    fix: str = "compare traces of the same prompt and image") -> bool:
    """Whether to draw the difference panel: ``"auto"`` draws it when the panels line up, True insists on it (an
    error names ``why`` they do not line up), False never draws it."""
    if difference is True and not aligned:
        raise VlmLensError(f"difference=True: {subject} do not line up ({why}); {fix}, or pass difference=False.")
    return bool(difference) and aligned


def symmetric_norm(delta: np.ndarray):
    """A colour norm centred on zero that spans the largest absolute difference."""
    from matplotlib.colors import Normalize

    m = float(np.nanmax(np.abs(delta))) if delta.size else 0.0
    m = m if m > 0 else 1e-6
    return Normalize(-m, m)


def side_by_side(n: int, width: float, height: float, sharey: bool = True):
    """A figure of ``n`` panels in a row, each ``width`` inches wide: ``(figure, [axes])``."""
    fig = new_figure(width * n + 0.8, height)
    return fig, list(fig.subplots(1, n, sharey=sharey, squeeze=False)[0])
