"""What the figure layer adds to the layers below it: ``t.plot`` on every :class:`~vlm_lens.Trace`.

Imported by ``import vlm_lens`` on first use (see docs/architecture.md, "Registrations").
"""

from ..tracing.record import register_trace_accessor
from .accessor import TracePlots

register_trace_accessor("plot", TracePlots)
