"""``evaluate`` and the default analyses of a run: the BIQA readings a dataset run computes unless told otherwise.

Example:
    >>> [type(a).__name__ for a in default_analyses()]
    ['Quality', 'Attention']
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..core.errors import VlmLensError
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

    Raises:
        VlmLensError: The dataset has no scores, or none of its images can be read (nothing to correlate).

    Example:
        >>> vl.evaluate(m, vl.datasets.from_json("test_koniq.json"))   # doctest: +SKIP
    """
    if isinstance(dataset, Dataset) and not dataset.has_scores:
        raise VlmLensError(f"dataset {dataset.name!r} has no scores, so there is nothing to correlate: build it with "
                           "score=... (from_csv / from_json / from_table) or scores=[...] (from_images); for readings "
                           "without scores use vl.run.")
    if isinstance(dataset, Dataset) and len(dataset.missing) == len(dataset):
        raise _unread(dataset, dataset.missing)
    result = run(model, dataset, [Quality(lens=False, **quality)], batch_size=batch_size, progress=progress)
    if result.meta["n_done"] == 0:
        raise _unread(dataset, result.skipped)
    return result["quality.correlations"]


def _unread(dataset: Dataset, skipped: pd.DataFrame) -> VlmLensError:
    reasons = "; ".join(f"{row.image}: {' '.join(str(row.reason).split())}" for row in skipped.head(3).itertuples())
    return VlmLensError(f"dataset {dataset.name!r}: none of its {len(dataset)} images could be read ({reasons}); "
                        "nothing to correlate. Check the image paths, or root=.")
