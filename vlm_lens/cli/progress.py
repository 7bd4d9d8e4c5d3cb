"""The progress display over a command's stages (on stderr, shown only on a terminal); prints go around it.

A command checks its arguments first (usage errors import no torch), then enters :class:`Steps`, which loads the
library with every layer's registrations.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["Steps"]


class Steps:
    """A progress bar over the stages of a command (on stderr, shown only on a terminal); prints go around it."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.bar, self.started, self.restore = total, label, None, False, None

    def __enter__(self) -> "Steps":
        from tqdm.auto import tqdm
        from transformers.utils import logging as hf_logging

        from ..extensions import register_all

        register_all()  # the library is loaded from here on, with every layer's registrations (zoo:, t.plot, ...)

        if hf_logging.is_progress_bar_enabled():  # one progress display: ours, not transformers' per-shard bars
            from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars

            downloads = not are_progress_bars_disabled()
            hf_logging.disable_progress_bar()
            if downloads:  # that also silenced the hub's download bars; they stay: gigabytes without a bar look hung
                enable_progress_bars()
            self.restore = hf_logging.enable_progress_bar
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
        if self.restore is not None:
            self.restore()
