"""The analyses a :func:`vlm_lens.run` can compute, in one namespace (``vl.analyses.Quality()``, ...).

Each is a reducer (:class:`~vlm_lens.reducers.Reducer`) defined next to the per-trace functions it aggregates;
this module only gathers them, so that a user needs one import to pick what a run computes.

Example:
    >>> from vlm_lens import analyses
    >>> sorted(a.name for a in (analyses.Quality(), analyses.Attention(), analyses.Instability(), analyses.Grounding()))
    ['attention', 'grounding', 'instability', 'quality']
"""

from __future__ import annotations

from ..runs.reducers import Reducer
from .attention import Attention
from .effects import KnockoutEffects
from .grounding import Grounding
from .instability import Instability
from .patching import PatchingEffects
from .quality import Quality

__all__ = ["Attention", "Grounding", "Instability", "KnockoutEffects", "PatchingEffects", "Quality", "Reducer"]
