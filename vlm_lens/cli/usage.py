"""What the command line accepts, and the usage error ``main`` answers with exit code 2. Imports no torch.

Example:
    >>> from vlm_lens.cli.usage import ANALYSES
    >>> ANALYSES
    ('quality', 'attention', 'instability', 'grounding', 'knockout', 'patching')
"""

from __future__ import annotations

__all__ = ["ANALYSES", "DATASET_SUFFIXES", "FORMATS", "UsageError"]

#: Figure formats of ``--formats``.
FORMATS = ("png", "svg", "pdf")
#: The analyses ``vlm-lens run --analyses`` offers, by the ``Reducer.name`` of their classes in ``vl.analyses``
#: (tests/cli check that the two agree; this list is here so that ``--help`` needs no torch).
ANALYSES = ("quality", "attention", "instability", "grounding", "knockout", "patching")
#: Dataset files ``run`` and ``eval`` read.
DATASET_SUFFIXES = (".csv", ".json")


class UsageError(Exception):
    """Options that argparse accepts one by one but not together; ``main`` answers exit code 2."""
