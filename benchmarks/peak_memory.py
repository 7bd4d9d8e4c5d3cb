"""Peak extra memory of a block, for the benchmark scripts (one sampler instead of one per script).

On a GPU: the CUDA allocator's peak above what was allocated when the block began. On the CPU: the resident set
size sampled in a thread every 2 ms (the samples are kept, so that a script can look at the trend: a leak shows as
a second half of the block above the first).

Example (from a script in this folder, which is on ``sys.path`` when the script runs)::

    from peak_memory import PeakMemory

    with PeakMemory("cpu") as memory:
        work()
    print(memory.peak, memory.halves)
"""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

__all__ = ["PeakMemory"]


class PeakMemory:
    """``peak``: bytes above the start at the block's highest point; ``halves``: on the CPU, the mean extra bytes over
    the first and the second half of the block's samples."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.peak, self.halves, self.samples = 0, [0.0, 0.0], []

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        self.process = psutil.Process()
        self.start = self.high = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            rss = self.process.memory_info().rss
            self.high = max(self.high, rss)
            self.samples.append(rss)
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
            return
        self.running = False
        self.thread.join()
        self.peak = max(self.high, self.process.memory_info().rss) - self.start
        half = len(self.samples) // 2
        self.halves = [float(np.mean(part)) - self.start if part else 0.0
                       for part in (self.samples[:half], self.samples[half:])]
