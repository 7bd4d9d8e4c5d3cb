"""What the runs layer adds to the layers below it: ``vl.TunedLens.fit(model, dataset)``, which streams a dataset like
a run (:mod:`vlm_lens.runs.lens_fit`), attached to the lens that lives in the tracing layer.

Imported by ``import vlm_lens`` on first use (see docs/architecture.md, "Registrations").
"""

from ..tracing.tuned_lens import register_fit
from .lens_fit import fit

register_fit(fit)
