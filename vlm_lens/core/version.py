"""The version of vlm_lens: one home, read by the packaging metadata (pyproject) and recorded in every result."""

__version__ = "0.1.0"
