"""The command line shows one progress display of its own, but a hub download keeps the hub's progress bar: a
download of gigabytes without one looks like a hang."""

from __future__ import annotations

from huggingface_hub.utils import are_progress_bars_disabled
from transformers.utils import logging as hf_logging

from vlm_lens.cli.progress import Steps


def test_downloads_keep_their_progress_bar_and_loading_bars_go():
    assert hf_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
    with Steps(1, "test") as steps:
        steps.next("loading")
        assert not hf_logging.is_progress_bar_enabled()  # transformers' per-shard loading bars: off
        assert not are_progress_bars_disabled()  # the hub's download bars: on
    assert hf_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
