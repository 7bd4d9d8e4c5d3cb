"""A vl.run on a tiny checkpoint and seeded noise images, as a separate process: killed mid-run by the resume test,
launched under torchrun by the distributed test.

    python tests/scripts/run_tiny.py CHECKPOINT OUT [--samples 10] [--batch-size 3] [--every 3] [--delay 0.0]

(option names that no torchrun option starts with: torchrun abbreviates its own options)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

import vlm_lens as vl
from vlm_lens.biqa.attention import Attention
from vlm_lens.biqa.instability import Instability
from vlm_lens.biqa.quality import Quality
from vlm_lens.runs.datasets import Dataset, from_images
from vlm_lens.runs.engine import run


class SlowDataset(Dataset):
    """Reads each image ``delay`` seconds late, so that a kill lands in the middle of the run."""

    delay: float = 0.0

    def load_image(self, sample):
        time.sleep(self.delay)
        return super().load_image(sample)


def images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (int(rng.integers(24, 60)), int(rng.integers(24, 60)), 3),
                                         dtype=np.uint8)) for _ in range(n)]


def dataset(n: int, delay: float = 0.0) -> Dataset:
    base = from_images(images(n), list(np.linspace(1.0, 5.0, n)), name="tiny-noise")
    slow = SlowDataset(base.samples, higher_is_better=True, name=base.name)
    slow.delay = delay
    return slow


def analyses() -> list:
    return [Quality(n_boot=20), Attention(), Instability(k=2, temperature=1.5)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=3)
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = vl.load(args.checkpoint)
    run(model, dataset(args.samples, args.delay), analyses(), out=args.out, batch_size=args.batch_size,
        checkpoint_every=args.every, progress=False)


if __name__ == "__main__":
    main()
