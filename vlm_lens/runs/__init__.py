"""The runs layer: streaming a dataset through a model, resumably, over any number of ranks.

- :mod:`~vlm_lens.runs.datasets`: image tables (CSV, JSON, memory) with checked scores;
- :mod:`~vlm_lens.runs.reducers`: the :class:`Reducer` protocol every dataset-level analysis follows, and what it
  asks to be traced (:class:`TraceRequest`);
- :mod:`~vlm_lens.runs.checkpoint`: atomic writes, per-rank checkpoints, the run's fingerprint;
- :mod:`~vlm_lens.runs.engine`: ``run`` and :class:`RunResult`;
- :mod:`~vlm_lens.runs.stats`: correlations with bootstrap intervals, paired tests;
- :mod:`~vlm_lens.runs.lens_fit`: fitting a tuned lens by streaming a dataset (``vl.TunedLens.fit``);
- :mod:`~vlm_lens.runs.lens_kl`: the KL per layer of the logit lens and a tuned lens to the model's output
  (:class:`LensKL`, an analysis of a run).

Generic: this layer names no analysis. The BIQA analyses live in ``vlm_lens.biqa``, which registers the defaults
``run`` uses when given none.

Example:
    >>> from vlm_lens.runs import datasets
    >>> import numpy as np
    >>> len(datasets.from_images([np.zeros((8, 8, 3), np.uint8)], [3.0]))
    1
"""

from . import datasets
from .engine import RunResult, default_analyses, register_default_analyses, run
from .lens_kl import LensKL
from .reducers import Reducer, TraceRequest

__all__ = ["LensKL", "Reducer", "RunResult", "TraceRequest", "datasets", "default_analyses",
           "register_default_analyses", "run"]
