"""What the report layer adds to the layers below it: ``t.report(path, ...)`` on every :class:`~vlm_lens.Trace`.

Imported by ``import vlm_lens`` on first use (see docs/architecture.md, "Registrations").
"""

from ..tracing.record import register_trace_method
from .html import write_report

register_trace_method("report", write_report)
