"""The BIQA layer: the paper's domain — level words, Q-Align scores, where an answer is decided, and the analyses.

- :mod:`~vlm_lens.biqa.vocabulary`: the level words, weights, answer prefix and prompts (one home for each);
- :mod:`~vlm_lens.biqa.answer`: where the level sits in a traced answer; description and answer segments;
- :mod:`~vlm_lens.biqa.quality`: the Q-Align score (the one scorer), the per-layer lens at the decision;
- :mod:`~vlm_lens.biqa.qalign`: Q-Align on the mPLUG-Owl2 family (its prompt format, a one-call score);
- :mod:`~vlm_lens.biqa.attention`: attention of the deciding position by segment, image token and patch;
- :mod:`~vlm_lens.biqa.instability`, :mod:`~vlm_lens.biqa.grounding`: the paper's two other analyses;
- :mod:`~vlm_lens.biqa.positions`: the position names ``"decision"`` and ``"description"`` of interventions;
- :mod:`~vlm_lens.biqa.effects`, :mod:`~vlm_lens.biqa.patching`: effects of knockouts and of patching another
  checkpoint's residual stream on the level, over a dataset;
- :mod:`~vlm_lens.biqa.analyses`: every analysis a run can compute, in one namespace (``vl.analyses``);
- :mod:`~vlm_lens.biqa.comparison`: checkpoints' runs compared, paired per sample (``vl.compare``);
- :mod:`~vlm_lens.biqa.evaluation`: ``vl.evaluate`` and the default analyses of a run;
- :mod:`~vlm_lens.biqa.extensions`: what this layer registers below it (``t.quality()``, ``t.attention_mass()``,
  the default analyses, the ``"q-align"`` prompt format).

Names load on first use, so that the command line can read the vocabulary without importing torch.

Example:
    >>> from vlm_lens import biqa
    >>> biqa.LEVELS
    ('excellent', 'good', 'fair', 'poor', 'bad')
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports
from .vocabulary import (
    ANSWER_PREFIX,
    BIQA_SEGMENTS,
    DESCRIBE_PROMPT,
    GOOD_POOR,
    LEVELS,
    QALIGN_PROMPT,
    WEIGHT_SETS,
    WEIGHTS,
)

_EXPORTS = {
    "AnswerLayout": ".answer:AnswerLayout", "locate": ".answer:locate", "segment_labels": ".answer:segment_labels",
    "level_token_ids": ".answer:level_token_ids",
    "Quality": ".quality:Quality", "quality": ".quality:quality", "lens_by_layer": ".quality:lens_by_layer",
    "weighted_score": ".quality:weighted_score",
    "qalign_score": ".qalign:qalign_score", "QALIGN_FORMAT": ".qalign:QALIGN_FORMAT",
    "LLAMA_LEVEL_IDS": ".qalign:LLAMA_LEVEL_IDS",
    "Attention": ".attention:Attention", "attention_mass": ".attention:attention_mass",
    "Instability": ".instability:Instability", "Grounding": ".grounding:Grounding",
    "KnockoutEffects": ".effects:KnockoutEffects", "PatchingEffects": ".patching:PatchingEffects",
    "decision_position": ".positions:decision_position",
    "Comparison": ".comparison:Comparison", "compare": ".comparison:compare",
    "default_analyses": ".evaluation:default_analyses", "evaluate": ".evaluation:evaluate",
    "analyses": ".analyses",
}

__all__ = ["ANSWER_PREFIX", "BIQA_SEGMENTS", "DESCRIBE_PROMPT", "GOOD_POOR", "LEVELS", "QALIGN_PROMPT", "WEIGHTS",
           "WEIGHT_SETS", "AnswerLayout", "Attention", "Comparison", "Grounding", "Instability", "KnockoutEffects",
           "LLAMA_LEVEL_IDS", "PatchingEffects", "QALIGN_FORMAT", "Quality", "analyses", "attention_mass", "compare",
           "decision_position", "default_analyses", "evaluate",
           "lens_by_layer", "level_token_ids", "locate", "qalign_score", "quality", "segment_labels",
           "weighted_score"]

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:
    from . import analyses
    from .answer import AnswerLayout, level_token_ids, locate, segment_labels
    from .attention import Attention, attention_mass
    from .comparison import Comparison, compare
    from .effects import KnockoutEffects
    from .evaluation import default_analyses, evaluate
    from .grounding import Grounding
    from .instability import Instability
    from .patching import PatchingEffects
    from .positions import decision_position
    from .qalign import LLAMA_LEVEL_IDS, QALIGN_FORMAT, qalign_score
    from .quality import Quality, lens_by_layer, quality, weighted_score
