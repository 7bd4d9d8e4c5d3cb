"""The progress display over a command's stages (on stderr, shown only on a terminal); prints go around it.

A command checks its arguments first (usage errors import no torch), then enters :class:`Steps`, which loads the
library with every layer's registrations and keeps transformers quiet unless ``--verbose`` (:mod:`.quiet`).
"""

from __future__ import annotations

import sys
from typing import Any

from .quiet import quiet

__all__ = ["Steps"]


class Steps:
    """A progress bar over the stages of a command (on stderr, shown only on a terminal); prints go around it."""

    def __init__(self, total: int, label: str, verbose: bool = False) -> None:
        self.total, self.label, self.bar, self.started = total, label, None, False
        self.quiet = quiet(verbose)  # one progress display: ours, not transformers' per-shard bars

    def __enter__(self) -> "Steps":
        from tqdm.auto import tqdm

        from ..extensions import register_all

        register_all()  # the library is loaded from here on, with every layer's registrations (zoo:, t.plot, ...)
        self.quiet.__enter__()
        self.bar = tqdm(total=self.total, desc=self.label, file=sys.stderr, leave=False,
                        disable=not sys.stderr.isatty(), bar_format="{desc} {bar:20} {n_fmt}/{total_fmt}{postfix}")
        return self

    def next(self, what: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_postfix_str(what)

    def write(self, text: str) -> None:
        self.bar.write(text, file=sys.stdout)

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None and self.started:
            self.bar.update(1)
        self.bar.close()
        self.quiet.__exit__(*exc)
