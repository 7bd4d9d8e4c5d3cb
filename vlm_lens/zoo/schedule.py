"""The learning-rate schedule every stage of the recipe uses: linear warm-up, then cosine decay to 10%.

Example:
    >>> round(cosine_lr(0, 100, 1e-3), 6), round(cosine_lr(99, 100, 1e-3), 6)
    (0.0002, 0.0001)
"""

from __future__ import annotations

import math

__all__ = ["cosine_lr"]


def cosine_lr(step: int, steps: int, peak: float, warmup: float = 0.05, floor: float = 0.1) -> float:
    """Learning rate at ``step`` of ``steps``: warm-up over the first ``warmup`` fraction, cosine to ``floor * peak``."""
    ramp = max(1, int(steps * warmup))
    if step < ramp:
        return peak * (step + 1) / ramp
    progress = (step - ramp) / max(1, steps - 1 - ramp)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
