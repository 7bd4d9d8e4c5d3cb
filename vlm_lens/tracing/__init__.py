"""The tracing layer: a loaded model, one traced forward, and the record it leaves.

- :mod:`~vlm_lens.tracing.loading`: ``load`` / ``wrap`` -> :class:`LensModel` (model + processor + family adapter);
- :mod:`~vlm_lens.tracing.settings`: :class:`Generation` and :class:`Keep`, the two groups of trace settings;
- :mod:`~vlm_lens.tracing.hooks`: the recorder (residual-stream hooks, the attention function for exact rows);
- :mod:`~vlm_lens.tracing.interventions`: ``knockout``, ``ablate``, ``patch``; :mod:`~vlm_lens.tracing.positions`:
  what a position name means in a sequence; :mod:`~vlm_lens.tracing.editing`: how interventions act in a forward;
- :mod:`~vlm_lens.tracing.tracer`: ``trace``;
- :mod:`~vlm_lens.tracing.record`: :class:`Trace`, what a trace returns, and how upper layers extend it;
- :mod:`~vlm_lens.tracing.lens`: the lens interface every reader takes as ``lens=``;
- :mod:`~vlm_lens.tracing.logit_lens`: decoding any layer through the final norm and output head;
- :mod:`~vlm_lens.tracing.tuned_lens`: :class:`TunedLens`, an affine translator per layer before them (fitted by
  :mod:`vlm_lens.runs.lens_fit`);
- :mod:`~vlm_lens.tracing.fingerprint`: what identifies a model's weights.

This layer knows models and positions, never a domain: no level word, no quality score (that is ``vlm_lens.biqa``).

Example:
    >>> import tempfile, numpy as np
    >>> from vlm_lens.testing import tiny_llava
    >>> from vlm_lens.tracing import Keep, load, trace
    >>> m = load(tiny_llava(tempfile.mkdtemp()))
    >>> t = trace(m, np.zeros((32, 32, 3), np.uint8), "rate it", keep=Keep(layers=[0, -1]))
    >>> t.layers
    [0, 2]
"""

from .interventions import ablate, knockout, patch
from .lens import Lens
from .loading import LensModel, load, register_source, wrap
from .logit_lens import LogitLens, resolve_lens, target_token_ids
from .positions import register_position
from .record import Trace, register_trace_accessor, register_trace_method
from .settings import Generation, Keep
from .tracer import trace
from .tuned_lens import TunedLens

__all__ = ["Generation", "Keep", "Lens", "LensModel", "LogitLens", "Trace", "TunedLens", "ablate", "knockout", "load",
           "patch", "register_position", "register_source", "register_trace_accessor", "register_trace_method",
           "resolve_lens", "target_token_ids", "trace", "wrap"]
