"""The report layer: one self-contained HTML page per trace (:func:`write_report`, also ``t.report(path)``), and one
per set of dataset runs (:func:`write_run_report`).

Example:
    >>> from vlm_lens.report import write_report
    >>> write_report.__name__
    'write_report'
"""

from .html import write_report
from .runs import write_run_report

__all__ = ["write_report", "write_run_report"]
