"""vlm_lens: why a vision-language model answers what it answers.

Every layer's residual stream, exact attention rows of the tokens you ask about, and the logit lens, for the
decoders of LLaVA-family VLMs, with tokens labelled system / image / instruction / response.

Example:
    >>> import vlm_lens as vl                                                   # doctest: +SKIP
    >>> m = vl.load("checkpoints/llava-1.5-7b-hf")                              # doctest: +SKIP
    >>> t = vl.trace(m, "img.jpg", "How would you rate the quality of this image?", generate=8)  # doctest: +SKIP
    >>> t.lens(topk=4)                                                          # doctest: +SKIP
"""

__version__ = "0.1.0"

from . import analyses, datasets, plot, zoo  # noqa: E402  (plot imports no matplotlib until a figure is drawn)
from .compare import Comparison, compare  # noqa: E402
from .errors import VlmLensError  # noqa: E402
from .loading import LensModel, load, wrap  # noqa: E402
from .trace import trace, trace_batch  # noqa: E402
from .report import write_report  # noqa: E402
from .runs import RunResult, evaluate, run  # noqa: E402
from .trace_result import Trace  # noqa: E402

__all__ = ["Comparison", "LensModel", "RunResult", "Trace", "VlmLensError", "analyses", "compare", "datasets",
           "evaluate", "load", "plot", "run", "trace", "trace_batch", "wrap", "write_report", "zoo"]
