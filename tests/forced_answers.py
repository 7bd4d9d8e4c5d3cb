"""Test helper: make a tiny random-init model "answer" a chosen text, so answer parsing, level positions, segments and
grounding can be checked on real traces with known content (the logits stay the model's own)."""

from __future__ import annotations

import torch
from transformers import LogitsProcessorList

import vlm_lens as vl


class Force:
    """Logits processor that makes row ``r`` generate ``rows[r]`` token by token (then ``</s>``)."""

    def __init__(self, rows: list[list[int]], eos: int = 2) -> None:
        self.rows, self.eos, self.start = rows, eos, None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        out = torch.full_like(scores, float("-inf"))
        for r, row in enumerate(self.rows):
            out[r, row[step] if step < len(row) else self.eos] = 0.0
        return out


def answer_ids(model: vl.LensModel, text: str) -> list[int]:
    return model.adapter.tokenizer.encode(text, add_special_tokens=False)


def forced_trace(model: vl.LensModel, image, text: str, prompt: str = "describe the quality of this image",
                 **kwargs) -> vl.Trace:
    """A trace whose response is exactly ``text`` followed by ``</s>``."""
    ids = answer_ids(model, text)
    force = {"logits_processor": LogitsProcessorList([Force([ids])])}
    return vl.trace(model, image, prompt, generate=vl.Generation(len(ids) + 1, kwargs=force), **kwargs)
