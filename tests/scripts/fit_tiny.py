"""A tuned-lens fit on a tiny checkpoint and seeded noise images, as a separate process: launched under torchrun by the
distributed test (each rank traces its share of every batch; the ranks sum their gradients).

    python tests/scripts/fit_tiny.py CHECKPOINT OUT [--samples 8] [--batch-size 4]

(option names that no torchrun option starts with: torchrun abbreviates its own options)
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

import vlm_lens as vl
from vlm_lens.runs.datasets import Dataset, from_images


def dataset(n: int) -> Dataset:
    rng = np.random.default_rng(5)
    images = [Image.fromarray(rng.integers(0, 256, (int(rng.integers(24, 60)), int(rng.integers(24, 60)), 3),
                                           dtype=np.uint8)) for _ in range(n)]
    return from_images(images, name="tiny-noise")


SETTINGS = dict(generate=2, held_out=0.25, epochs=2, lr=1e-2, seed=3, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = vl.load(args.checkpoint)
    vl.TunedLens.fit(model, dataset(args.samples), batch_size=args.batch_size, out=args.out, **SETTINGS)


if __name__ == "__main__":
    main()
