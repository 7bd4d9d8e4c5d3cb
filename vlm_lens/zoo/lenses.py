"""The zoo's tuned lenses: the recipe stage that fits one per shipped checkpoint, and what they change in a reading.

Stage ``lens`` of the recipe (``python -m vlm_lens.zoo.train --stage lens --out DIR``) reads a checkpoint — the one
the same command just trained, or else the shipped one — and never changes its weights. It fits a
:class:`~vlm_lens.TunedLens` on synthetic images of the training seed with the zoo's first question and greedy
answers of up to 48 tokens, measures it on held-out images of seed 1 (never trained on, as in docs/zoo.md), and
writes it to ``DIR/<checkpoint>/tuned_lens/`` (copy that folder into the checkpoint's folder under
``vlm_lens/zoo/checkpoints/`` to ship it; ``vl.TunedLens.load("zoo:NAME", model)`` reads it there). Everything is
seeded: the same command on the same software writes the same bytes.

Besides the KL per layer, the stage measures what the paper's latent-output reading becomes through the tuned lens:
at the decision position (the one whose logits choose the level word, :mod:`vlm_lens.zoo.measure`), the first
hidden index at which the generated level word is the lens's top-1, through the logit lens and through the tuned
lens, counted over the held-out images.

Example:
    >>> lens = vl.TunedLens.load("zoo:tiny-biqa-one-stage", vl.load("zoo:tiny-biqa-one-stage"))   # doctest: +SKIP
    >>> lens.held_out                                                # layer, logit, tuned     # doctest: +SKIP
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd

from .grammar import PROMPTS
from .synthetic import synthetic

if TYPE_CHECKING:
    from ..tracing import LensModel, TunedLens

__all__ = ["HELD_OUT_SEED", "NEW_TOKENS", "first_top1", "fit_zoo_lens"]

#: Seed of the held-out images the lenses are measured on (docs/zoo.md's tables use it too; training uses 0).
HELD_OUT_SEED = 1
#: Tokens generated per answer (the longest answer of the grammar is 36 tokens).
NEW_TOKENS = 48


def fit_zoo_lens(model: "LensModel", name: str, folder: str | Path, *, images: int, held_out: int, epochs: int,
                 batch: int, lr: float, trace_batch: int, seed: int = 0,
                 log: Callable[[str], None] = print) -> dict:
    """Fit, measure and save the tuned lens of checkpoint ``name`` on ``images`` synthetic images of ``seed``, measured
    on ``held_out`` images of :data:`HELD_OUT_SEED` (the ``lens_*`` settings of the recipe); returns the measurements
    (seconds, the held-out KL per layer, the first-top-1 counts through both lenses)."""
    from ..runs.datasets import from_images
    from ..runs.lens_fit import fit

    train = from_images(synthetic(images, seed=seed).images, name=f"zoo-seed-{seed}")
    held = synthetic(held_out, seed=HELD_OUT_SEED).images
    start = time.perf_counter()
    lens = fit(model, train, prompt=PROMPTS[0], generate=NEW_TOKENS,
               held_out=from_images(held, name=f"zoo-seed-{HELD_OUT_SEED}"), epochs=epochs, batch_size=batch, lr=lr,
               seed=seed, trace_batch=trace_batch, progress=False)
    seconds = time.perf_counter() - start
    lens.info["model"]["name"] = f"zoo:{name}"  # the checkpoint, not the folder it was read from on this machine
    lens.save(Path(folder))
    table = lens.held_out
    below = table[table["layer"] < model.adapter.n_layers]
    ratio = float(below["tuned"].mean() / below["logit"].mean())
    log(f"lens {name}: {seconds:.0f} s; held-out KL mean over layers {below['logit'].mean():.3f} (logit) -> "
        f"{below['tuned'].mean():.3f} (tuned), {ratio:.3f}x")
    counts = first_top1(model, held, lens)
    return {"seconds": seconds, "ratio": ratio, "below_everywhere": bool((below["tuned"] < below["logit"]).all()),
            "held_out": table.to_dict("list"), "first_top1": counts.to_dict("list"), "training": lens.info["training"]}


def first_top1(model: "LensModel", images, lens: "TunedLens", *, batch: int = 64) -> pd.DataFrame:
    """Per hidden index, the number of ``images`` whose generated level word is first the top-1 there at the decision
    position (``logit`` and ``tuned``), and from where on it stays top-1 (``logit_stays``, ``tuned_stays``)."""
    from ..tracing import Keep, trace
    from .measure import read

    n_hidden = model.adapter.n_layers + 1
    found: dict[str, list[int]] = {"logit": [], "tuned": [], "logit_stays": [], "tuned_stays": []}
    for start in range(0, len(images), batch):
        chunk = list(images[start:start + batch])
        for t in trace(model, chunk, [PROMPTS[0]] * len(chunk), generate=NEW_TOKENS, keep=Keep(attention=False)):
            for kind, reader in (("logit", True), ("tuned", lens)):
                reading = read(t, lens=reader)
                if reading.lens_first_top1 is not None:
                    found[kind].append(reading.lens_first_top1)
                if reading.lens_stays_top1 is not None:
                    found[f"{kind}_stays"].append(reading.lens_stays_top1)
    return pd.DataFrame({"layer": np.arange(n_hidden),
                         **{k: np.bincount(v, minlength=n_hidden)[:n_hidden] for k, v in found.items()}})
