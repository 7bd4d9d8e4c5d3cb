"""What the BIQA layer adds to the layers below it, in one place.

- ``t.quality()`` and ``t.attention_mass()`` on every :class:`~vlm_lens.Trace` (the readings of this layer);
- the analyses ``vl.run`` computes when given none (Q-Align quality with the per-layer lens, attention by segment);
- the question ``vl.TunedLens.fit`` and the lens-KL analysis ask when given none (Q-Align's);
- the upgrade of run folders written by earlier versions (renamed columns, :mod:`~vlm_lens.biqa.legacy`);
- the ``"q-align"`` prompt format of the mPLUG-Owl2 family;
- the position names ``"decision"`` and ``"description"`` of interventions (``vl.knockout("decision", ...)``).

Imported by ``import vlm_lens`` on first use (see docs/architecture.md, "Registrations").
"""

from ..models.mplug_owl2.prompts import register_prompt_format
from ..runs.engine import register_default_analyses, register_table_upgrade
from ..runs.lens_kl import register_default_prompt
from ..tracing.positions import register_position
from ..tracing.record import register_trace_method
from .attention import attention_mass
from .evaluation import default_analyses
from .legacy import upgrade
from .positions import decision, description
from .qalign import QALIGN_FORMAT
from .quality import quality
from .vocabulary import QALIGN_PROMPT

register_trace_method("quality", quality)
register_trace_method("attention_mass", attention_mass)
register_default_analyses(default_analyses)
register_default_prompt(QALIGN_PROMPT)
register_table_upgrade(upgrade)
register_prompt_format(QALIGN_FORMAT)
register_position("decision", decision)
register_position("description", description)
