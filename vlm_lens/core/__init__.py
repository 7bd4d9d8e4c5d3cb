"""The bottom layer: what every other layer of vlm_lens may use, and which uses nothing of vlm_lens.

- :mod:`~vlm_lens.core.errors`: the one exception family (:class:`VlmLensError` and its subclasses);
- :mod:`~vlm_lens.core.checks`: plain argument values checked one way everywhere (integers, booleans, dtypes,
  devices, folders);
- :mod:`~vlm_lens.core.images`: paths, PIL images and arrays -> RGB;
- :mod:`~vlm_lens.core.spans`: segments, spans of positions, patch-grid blocks;
- :mod:`~vlm_lens.core.sampling`: seeded sampling that does not depend on the batch;
- :mod:`~vlm_lens.core.version`: the version.

Example:
    >>> from vlm_lens.core import Span, VlmLensError
    >>> len(Span(2, 5))
    3
"""

from .errors import (
    CheckpointError,
    DamagedFileError,
    ImageError,
    RunMismatchError,
    UnsupportedModelError,
    VlmLensError,
)
from .spans import SEGMENTS, GridBlock, Span
from .version import __version__

__all__ = ["SEGMENTS", "CheckpointError", "DamagedFileError", "GridBlock", "ImageError", "RunMismatchError", "Span",
           "UnsupportedModelError", "VlmLensError", "__version__"]
