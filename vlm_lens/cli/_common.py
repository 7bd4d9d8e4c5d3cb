"""What the commands share: their constants, the progress display over a command's stages, and the usage error
that ``main`` answers with exit code 2."""

from __future__ import annotations

import sys
from typing import Any

from ..answer import LEVELS as _LEVELS

__all__ = ["ANALYSES", "DATASET_SUFFIXES", "FORMATS", "LEVELS", "QUESTION", "Steps", "UsageError"]

LEVELS = list(_LEVELS)
FORMATS = ("png", "svg", "pdf")
QUESTION = "How would you rate the quality of this image?"
#: The analyses ``vlm-lens run --analyses`` knows, by their ``Reducer.name`` (the classes live in vlm_lens.analyses).
ANALYSES = ("quality", "attention", "instability", "grounding")
DATASET_SUFFIXES = (".csv", ".json")


class UsageError(Exception):
    """Options that argparse accepts one by one but not together; ``main`` answers exit code 2."""


class Steps:
    """A progress bar over the stages of a command (on stderr, shown only on a terminal); prints go around it."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.bar, self.started, self.restore = total, label, None, False, None

    def __enter__(self) -> "Steps":
        from tqdm.auto import tqdm
        from transformers.utils import logging as hf_logging

        if hf_logging.is_progress_bar_enabled():  # one progress display: ours, not transformers' per-shard bars
            hf_logging.disable_progress_bar()
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
