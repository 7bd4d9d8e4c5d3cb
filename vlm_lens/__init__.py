"""vlm_lens: why a vision-language model answers what it answers.

Every layer's residual stream, exact attention rows of the tokens you ask about, and the logit and tuned lenses, for
the decoders of vision-language models, with tokens labelled system / image / instruction / response.

``import vlm_lens`` is light: the verbs below are imported the first time one is used, and that first use also
loads every layer that extends a :class:`Trace` (``t.plot``, ``t.report``, ``t.quality``, ``t.attention_mass``), so
what a user reaches through ``vl.`` always has them. The package's layers are described in docs/architecture.md.

Example:
    >>> import vlm_lens as vl                                                   # doctest: +SKIP
    >>> m = vl.load("checkpoints/llava-1.5-7b-hf")                              # doctest: +SKIP
    >>> t = vl.trace(m, "img.jpg", "How would you rate the quality of this image?", generate=8)  # doctest: +SKIP
    >>> t.lens(topk=4)                                                          # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .core.lazy import lazy_exports
from .core.version import __version__  # noqa: F401 - vl.__version__
from .extensions import register_all

__all__ = ["Comparison", "Generation", "Keep", "LensModel", "RunResult", "Trace", "TunedLens", "VlmLensError",
           "ablate", "analyses", "compare", "datasets", "errors", "evaluate", "knockout", "load", "patch", "plot",
           "run", "trace", "wrap", "write_report", "write_run_report", "zoo"]

_EXPORTS = {
    "Comparison": ".biqa.comparison:Comparison", "compare": ".biqa.comparison:compare",
    "evaluate": ".biqa.evaluation:evaluate", "analyses": ".biqa.analyses",
    "Generation": ".tracing.settings:Generation", "Keep": ".tracing.settings:Keep",
    "LensModel": ".tracing.loading:LensModel", "load": ".tracing.loading:load", "wrap": ".tracing.loading:wrap",
    "Trace": ".tracing.record:Trace", "trace": ".tracing.tracer:trace", "TunedLens": ".tracing.tuned_lens:TunedLens",
    "knockout": ".tracing.interventions:knockout", "ablate": ".tracing.interventions:ablate",
    "patch": ".tracing.interventions:patch",
    "RunResult": ".runs.engine:RunResult", "run": ".runs.engine:run", "datasets": ".runs.datasets",
    "VlmLensError": ".core.errors:VlmLensError", "errors": ".core.errors",
    "plot": ".plot", "write_report": ".report.html:write_report", "write_run_report": ".report.runs:write_run_report",
    "zoo": ".zoo",
}
_REMOVED = {
    "trace_batch": "vl.trace_batch(model, images, prompts, ...) was removed: vl.trace takes a list of prompts (and one "
                   "image entry per prompt) and traces them as one batch.",
}
# The first use of any name also loads what the upper layers register below them (Trace methods and accessors, the
# default analyses of a run, the Q-Align prompt format, the zoo: source of load): see vlm_lens.extensions.
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS, removed=_REMOVED, before=register_all)

if TYPE_CHECKING:  # what static tools and IDEs see; at run time these load on first use
    from . import plot, zoo
    from .biqa import analyses
    from .biqa.comparison import Comparison, compare
    from .biqa.evaluation import evaluate
    from .core import errors
    from .core.errors import VlmLensError
    from .report.html import write_report
    from .report.runs import write_run_report
    from .runs import datasets
    from .runs.engine import RunResult, run
    from .tracing.interventions import ablate, knockout, patch
    from .tracing.loading import LensModel, load, wrap
    from .tracing.record import Trace
    from .tracing.settings import Generation, Keep
    from .tracing.tracer import trace
    from .tracing.tuned_lens import TunedLens
