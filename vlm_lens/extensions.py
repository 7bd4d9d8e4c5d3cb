"""Every layer's registrations, loaded in one call: what ``import vlm_lens`` does on first use, and the command line
before it runs a command.

Lower layers offer registries and never import upward; each upper layer registers what it adds in its own
``extensions`` module (see docs/architecture.md, "Registrations"):

- ``vlm_lens.runs.extensions``: ``TunedLens.fit(model, dataset)`` (fitting streams a dataset like a run);
- ``vlm_lens.biqa.extensions``: ``t.quality()``, ``t.attention_mass()``, the default analyses of ``run``, the
  default prompt of ``TunedLens.fit``, the ``"q-align"`` prompt format of mPLUG-Owl2;
- ``vlm_lens.plot.extensions``: ``t.plot``;
- ``vlm_lens.report.extensions``: ``t.report(path)``;
- ``vlm_lens.zoo.extensions``: ``load("zoo:NAME")``.

Example:
    >>> from vlm_lens.extensions import register_all
    >>> register_all()
    >>> from vlm_lens.tracing import Trace
    >>> callable(Trace.report)
    True
"""

from __future__ import annotations

import importlib

__all__ = ["EXTENSIONS", "register_all"]

#: The modules that register an upper layer's additions, bottom layer first.
EXTENSIONS = ("vlm_lens.runs.extensions", "vlm_lens.biqa.extensions", "vlm_lens.plot.extensions",
              "vlm_lens.report.extensions", "vlm_lens.zoo.extensions")


def register_all() -> None:
    """Import every extension module (each registers on import; importing again does nothing)."""
    for name in EXTENSIONS:
        importlib.import_module(name)
