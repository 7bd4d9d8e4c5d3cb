"""``evaluate`` and the default analyses of a run: the BIQA readings a dataset run computes unless told otherwise.

Example:
    >>> [type(a).__name__ for a in default_analyses()]
    ['Quality', 'Attention']
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..runs.datasets import Dataset
from ..runs.engine import run
from ..runs.reducers import Reducer
from ..tracing.loading import LensModel
from .attention import Attention
from .quality import Quality

__all__ = ["default_analyses", "evaluate"]


def default_analyses() -> list[Reducer]:
    """Q-Align quality (with the per-layer lens) and attention by segment, both from one traced forward."""
    return [Quality(), Attention()]


def evaluate(model: LensModel, dataset: Dataset, *, batch_size: int = 8, progress: bool = False,
             **quality: Any) -> pd.DataFrame:
    """SRCC / PLCC / logistic PLCC of the Q-Align and good/poor scores on ``dataset`` (no files written).

    Args:
        **quality: Arguments of :class:`~vlm_lens.biqa.quality.Quality` (levels, weights, prompt, n_boot, ...).

    Returns:
        The ``quality.correlations`` table: ``score, metric, value, low, high, n, n_missing``.

    Example:
        >>> vl.evaluate(m, vl.datasets.from_json("test_koniq.json"))   # doctest: +SKIP
    """
    result = run(model, dataset, [Quality(lens=False, **quality)], batch_size=batch_size, progress=progress)
    return result["quality.correlations"]
