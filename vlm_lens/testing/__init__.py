"""Tiny random-init checkpoints for tests and docs, written to disk exactly as real checkpoints are.

Nothing in the vlm_lens package imports this package (an import-linter contract checks it): it exists so that
the tests, the docs' code blocks and your own experiments can build a model in a second, and load it through the
same ``vl.load(path)`` a real checkpoint takes.

- :func:`tiny_llava`: LLaVA-1.5 or LLaVA-NeXT, any decoder shape (multi-head, grouped-query, multi-query);
- :func:`tiny_mplug_owl2`: mPLUG-Owl2 in the official checkpoint layout.

Example:
    >>> import tempfile, vlm_lens as vl
    >>> from vlm_lens.testing import tiny_llava
    >>> vl.load(tiny_llava(tempfile.mkdtemp(), layers=3)).adapter.n_layers
    3
"""

from .llava import VOCABULARY, tiny_llava
from .mplug_owl2 import tiny_mplug_owl2

__all__ = ["VOCABULARY", "tiny_llava", "tiny_mplug_owl2"]
