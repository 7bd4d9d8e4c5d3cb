"""``python -m vlm_lens.zoo.evaluate``: the measurements the zoo checkpoints are shipped with, on held-out images.

For each model, on ``n`` synthetic images of a seed never trained on (default: 500 images of seed 1), through the
public API only (``vl.load``, ``vl.trace`` with ``generate=``, ``Trace.lens_targets``, ``Trace.attention``,
``Trace.tokens``, and ``vl.run`` with ``vl.analyses.Instability``):

- **quality**: SRCC and PLCC (Pearson, no logistic fit) of the Q-Align score against the ground-truth MOS, and
  the accuracy of the generated level word;
- **descriptions**: per degradation type, precision and recall of "the description names it", and the accuracy
  of the severity word where it is named correctly;
- **instability**: ``samples`` sampled answers per image at temperature ``temperature`` (the whole answer: the
  description and the level), through :class:`~vlm_lens.biqa.instability.Instability`; the share of images whose
  level word is not the same in every answer that has one;
- **attention**: the decision position's attention mass on image / description / other tokens, by layer;
- **logit lens**: the first layer (hidden-state index) at which the final level word is the lens's top-1.

``measure.py`` says what each position and quantity is. Writes ``report.json`` and ``report.md`` to ``--out``.

Example:
    >>> ev = evaluate(vl.load("zoo:tiny-biqa-one-stage"), n=100)    # doctest: +SKIP
    >>> ev.metrics["srcc"]                                          # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..biqa.instability import Instability
from ..runs import datasets
from ..runs.engine import run
from ..runs.stats import plcc, srcc
from ..tracing import Keep, Lens, LensModel, trace
from .grammar import LEVELS_WORST_FIRST, PROMPTS, parse
from .measure import MASS_PARTS, Reading, read
from .synthetic import TYPES, synthetic_arrays

__all__ = ["Evaluation", "answer_metrics", "evaluate", "greedy_readings", "sampled_levels", "write_report"]

#: Tokens generated per answer (the longest answer of the grammar is 36 tokens).
NEW_TOKENS = 48


@dataclass
class Evaluation:
    """The measurements of one model.

    Attributes:
        name: The model's name.
        metrics: Scalars (see :func:`answer_metrics`, plus ``instability``, ``lens_first_top1_mean`` ...).
        attention: One row per decoder layer: ``layer`` (1 = first decoder block), then the mean mass on each of
            ``image, description, other`` over images and their standard deviations.
        lens: Count of images per first-top-1 hidden-state index: ``layer, first_top1, stays_top1``.
        per_image: One row per image: ``mos, level, score, generated_level, description, answer, ...``.
    """

    name: str
    metrics: dict
    attention: pd.DataFrame
    lens: pd.DataFrame
    per_image: pd.DataFrame = field(repr=False)


def _pil(images) -> list:
    from PIL import Image

    return [Image.fromarray(x) if isinstance(x, np.ndarray) else x for x in images]


def greedy_readings(model: LensModel, images, *, prompt: str = PROMPTS[0], batch: int = 50, attention: bool = True,
                    lens: "bool | Lens" = True) -> list[Reading]:
    """Greedy answers for ``images`` (uint8 array ``[n, H, W, 3]`` or PIL images), read by :func:`.measure.read`
    (``lens``: True for the logit lens, a lens to read the layers through, False for none)."""
    pictures = _pil(images)
    readings = []
    keep = Keep(layers=None if lens is not False else [model.adapter.n_layers], attention=attention)
    for start in range(0, len(pictures), batch):
        chunk = pictures[start:start + batch]
        traces = trace(model, chunk, [prompt] * len(chunk), generate=NEW_TOKENS, keep=keep)
        readings.extend(read(t, lens=lens) for t in traces)
    return readings


def sampled_levels(model: LensModel, images, *, samples: int = 10, temperature: float = 0.7,
                   prompt: str = PROMPTS[0], batch: int = 50, seed: int = 0) -> pd.DataFrame:
    """The instability analysis over ``samples`` sampled answers per image (whole answers: no prefilled prefix).

    Returns:
        The ``instability.repeats`` table of the run (``index, id, repeat, seed, ..., level, answer``) with the
        run's ``instability.summary`` in ``.attrs["summary"]``.
    """
    dataset = datasets.from_images(_pil(images), name="zoo-evaluation")
    analysis = Instability(samples, temperature=temperature, seed=seed, prompt=prompt, prefill=False,
                           generate=NEW_TOKENS)
    result = run(model, dataset, [analysis], batch_size=batch, progress=False)
    repeats = result["instability.repeats"]
    repeats.attrs["summary"] = result["instability.summary"]
    return repeats


def answer_metrics(readings: Sequence[Reading], labels: pd.DataFrame) -> dict:
    """Quality and description metrics of greedy answers against the ground truth.

    Returns:
        ``n``, ``coverage`` (share of answers with a level word; the others score 3.0), ``srcc``, ``plcc``,
        ``level_accuracy``, ``description_exact`` (share of descriptions equal to the ground truth), and per type
        ``precision``, ``recall``, ``severity_accuracy`` under ``types``.
    """
    scores = np.array([r.score if not math.isnan(r.score) else 3.0 for r in readings])
    mos = labels["mos"].to_numpy()
    truth = [parse(d) for d in labels["description"]]
    types = {}
    for t in TYPES:
        said = np.array([t in r.degradations for r in readings])
        real = np.array([t in g for g in truth])
        hit = said & real
        words = [r.degradations[t] == w[t] for r, w, h in zip(readings, truth, hit) if h]
        types[t] = {"support": int(real.sum()), "precision": float(hit.sum() / max(said.sum(), 1)),
                    "recall": float(hit.sum() / max(real.sum(), 1)),
                    "severity_accuracy": float(np.mean(words)) if words else math.nan}
    clean = [" ".join(d.lower().replace(".", " .").replace(",", " ,").split()) for d in labels["description"]]
    return {"n": len(readings), "coverage": float(np.mean([r.level is not None for r in readings])),
            "srcc": srcc(scores, mos), "plcc": plcc(scores, mos),
            "level_accuracy": float(np.mean([r.level == lv for r, lv in zip(readings, labels["level"])])),
            "description_exact": float(np.mean([" ".join(r.description.split()) == c
                                                for r, c in zip(readings, clean)])),
            "min_precision": min(v["precision"] for v in types.values()),
            "min_recall": min(v["recall"] for v in types.values()), "types": types}


def evaluate(model: LensModel, *, n: int = 500, seed: int = 1, samples: int = 10, temperature: float = 0.7,
             batch: int = 50, name: str | None = None) -> Evaluation:
    """All measurements of ``model`` on ``n`` synthetic images of ``seed`` (see the module docstring)."""
    images, labels = synthetic_arrays(n, seed)
    t = time.perf_counter()
    readings = greedy_readings(model, images, batch=batch)
    metrics = answer_metrics(readings, labels)
    metrics["seconds_greedy"] = time.perf_counter() - t
    if samples:
        t = time.perf_counter()
        repeats = sampled_levels(model, images, samples=samples, temperature=temperature, batch=batch)
        greedy = np.array([r.level for r in readings], dtype=object)
        metrics["instability"] = float(repeats.attrs["summary"]["pct_changed"].iloc[0]) / 100.0
        metrics["sample_disagreement"] = float(np.mean(repeats["level"].to_numpy(object)
                                                       != greedy[repeats["index"].to_numpy()]))
        metrics["samples"], metrics["temperature"] = samples, temperature
        metrics["seconds_sampling"] = time.perf_counter() - t
    masses = np.stack([r.attention for r in readings if r.attention is not None])  # [image, layer, part]
    attention = pd.DataFrame(masses.mean(0), columns=list(MASS_PARTS))
    attention.insert(0, "layer", np.arange(1, len(attention) + 1))  # decoder blocks, 1-based as in Trace
    for part in MASS_PARTS:
        attention[f"{part}_std"] = masses[:, :, MASS_PARTS.index(part)].std(0)
    first = [r.lens_first_top1 for r in readings if r.lens_first_top1 is not None]
    stays = [r.lens_stays_top1 for r in readings if r.lens_stays_top1 is not None]
    n_hidden = model.adapter.n_layers + 1
    lens = pd.DataFrame({"layer": np.arange(n_hidden),
                         "first_top1": np.bincount(first, minlength=n_hidden)[:n_hidden],
                         "stays_top1": np.bincount(stays, minlength=n_hidden)[:n_hidden]})
    metrics.update({"lens_first_top1_mean": float(np.mean(first)) if first else math.nan,
                    "lens_first_top1_median": float(np.median(first)) if first else math.nan,
                    "lens_stays_top1_mean": float(np.mean(stays)) if stays else math.nan,
                    "attention_image_mean": float(masses[:, :, 0].mean()),
                    "attention_description_mean": float(masses[:, :, 1].mean())})
    per_image = labels[["index", "mos", "level", "description"]].copy()
    per_image["score"] = [r.score for r in readings]
    per_image["generated_level"] = [r.level for r in readings]
    per_image["generated_description"] = [r.description for r in readings]
    per_image["lens_first_top1"] = [r.lens_first_top1 for r in readings]
    for k, level in enumerate(LEVELS_WORST_FIRST):
        per_image[f"p_{level}"] = [r.level_probs[k] for r in readings]
    return Evaluation(name or model.name, metrics, attention, lens, per_image)


def write_report(evaluations: Sequence[Evaluation], out: str | Path) -> Path:
    """Write ``report.json`` (everything) and ``report.md`` (the tables of docs/zoo.md) to folder ``out``."""
    from .report import markdown

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {ev.name: {"metrics": ev.metrics, "attention": ev.attention.to_dict("list"),
                         "lens": ev.lens.to_dict("list")} for ev in evaluations}
    (folder / "report.json").write_text(json.dumps(payload, indent=1, default=float))
    (folder / "report.md").write_text(markdown(evaluations))
    for ev in evaluations:
        ev.per_image.to_csv(folder / f"{Path(ev.name).name.replace(':', '_')}_per_image.csv", index=False)
    return folder


def main(argv: list[str] | None = None) -> None:
    from ..tracing import load
    from . import extensions  # noqa: F401 - registers zoo:NAME as a model name

    parser = argparse.ArgumentParser(prog="python -m vlm_lens.zoo.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["zoo:tiny-biqa-one-stage", "zoo:tiny-biqa-two-stage"])
    parser.add_argument("--n", type=int, default=500, help="held-out images (default 500)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the held-out images (training uses 0)")
    parser.add_argument("--samples", type=int, default=10, help="sampled answers per image for instability")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="reports/zoo")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    evaluations = []
    for name in args.models:
        ev = evaluate(load(name), n=args.n, seed=args.seed, samples=args.samples, temperature=args.temperature,
                      name=name)
        print(f"{name}: " + json.dumps({k: v for k, v in ev.metrics.items() if k != "types"}, default=float))
        evaluations.append(ev)
    print(f"wrote {write_report(evaluations, args.out)}")


if __name__ == "__main__":
    main()
