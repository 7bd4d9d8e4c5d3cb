"""Quiet by default: what transformers prints while loading a model (per-shard progress bars, load reports, advice)
is hidden unless ``--verbose`` is given, so that a command's output is its answer.

Example:
    >>> with quiet(verbose=False):          # doctest: +SKIP
    ...     m = vl.load("zoo:tiny-biqa-one-stage")
"""

from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["quiet"]


@contextlib.contextmanager
def quiet(verbose: bool = False) -> Iterator[None]:
    """Within the block, transformers' progress bars are off and its log shows errors only (``verbose``: left as
    they are); the hub's download bars stay on. Both are restored on exit."""
    if verbose:
        yield
        return
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if bars:
        from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars

        downloads = not are_progress_bars_disabled()
        hf_logging.disable_progress_bar()
        if downloads:  # that also silenced the hub's download bars; they stay: gigabytes without a bar look hung
            enable_progress_bars()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
