"""Seeded sampling that does not depend on the batch: each row draws from its own random generator.

``model.generate(do_sample=True)`` draws the tokens of every row of a batch from one random stream, so what
sample 3 generates depends on which other samples share its batch and in which order. A run that shards its
batches over ranks, resumes after a kill, or changes nothing but the batch size would then sample different
answers for the same image. :class:`RowSampler` is a logits processor that applies temperature and top-p itself
and draws each row's token from a ``torch.Generator`` seeded for that (sample, repeat) alone; every other token's
logit becomes ``-inf``, so greedy decoding (``do_sample=False``) emits exactly the drawn token. Drawing happens on
the CPU in float32, so the same logits give the same token on any device.

:func:`derive_seed` turns (run seed, sample id, repeat) into the per-row seed, so a sample keeps its seeds
whatever its position in the dataset or the batch.

Example:
    >>> from vlm_lens.core.sampling import derive_seed
    >>> derive_seed(0, "img_001.jpg", 2) == derive_seed(0, "img_001.jpg", 2)
    True
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch

from .errors import VlmLensError

__all__ = ["RowSampler", "derive_seed"]


def derive_seed(seed: int, sample_id: str, repeat: int) -> int:
    """A 63-bit seed for one (sample, repeat) of a run with ``seed``; stable across processes and versions."""
    digest = hashlib.sha256(f"{int(seed)}\x00{sample_id}\x00{int(repeat)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class RowSampler:
    """Logits processor: temperature, then top-p, then one draw per row from that row's own generator.

    Args:
        seeds: One seed per batch row (in the order of the rows given to ``generate``).
        temperature: Logits are divided by it (> 0).
        top_p: Keep the smallest set of most probable tokens whose probability reaches ``top_p`` (0 < top_p <= 1).

    Pass it as ``generation_kwargs={"logits_processor": LogitsProcessorList([RowSampler(...)])}`` together with
    ``do_sample=False``. Rows that already finished keep drawing, which changes nothing for any row.
    """

    def __init__(self, seeds: Sequence[int], temperature: float = 1.0, top_p: float = 1.0) -> None:
        if not temperature > 0 or not 0 < top_p <= 1:
            raise VlmLensError(f"temperature={temperature}, top_p={top_p}: sampling needs temperature > 0 and "
                               "0 < top_p <= 1.")
        self.seeds = [int(s) for s in seeds]
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"RowSampler was built for {len(self.generators)} rows, generate gave {scores.shape[0]}")
        logits = scores.detach().float().cpu() / self.temperature
        chosen = [self._draw(row, generator) for row, generator in zip(logits, self.generators)]
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(chosen)), torch.tensor(chosen, device=scores.device)] = 0.0
        return out

    def _draw(self, logits: torch.Tensor, generator: torch.Generator) -> int:
        probs = torch.softmax(logits, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True, stable=True)
            before = sorted_probs.cumsum(0) - sorted_probs  # mass of the tokens ranked above each token
            keep = before < self.top_p
            keep[0] = True
            filtered = torch.zeros_like(probs)
            filtered[order[keep]] = sorted_probs[keep]
            probs = filtered
        return int(torch.multinomial(probs, 1, generator=generator))
