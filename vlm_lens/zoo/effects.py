"""``python -m vlm_lens.zoo.effects``: the paper's question asked causally on the two zoo checkpoints.

Does the two-stage checkpoint's level depend on its description more than on the image, and in which layers? For
each checkpoint, on ``n`` held-out synthetic images (default 200 of seed 1; seed 0 is training data), through the
public API only (``vl.run`` with :class:`~vlm_lens.biqa.effects.KnockoutEffects` and
:class:`~vlm_lens.biqa.patching.PatchingEffects`, then ``vl.compare`` and ``vl.plot``):

- **knockout**: per image, the decision position may not attend to the image, the instruction or the description
  in one window of two decoder layers (1-2, 3-4, 5-6, 7-8), over the model's own greedy answer;
- **patching**: the other checkpoint's residual stream patched in at the image tokens or at the decision position,
  at every hidden index 0..8;
- **comparison**: paired tests between the checkpoints (Wilcoxon for score changes, McNemar for flips).

Writes the run folders, ``comparison/`` (tables), ``figures/`` (PNG) and ``report.md`` under ``--out``; prints the
tables. At the default size, 553 s for both checkpoints on one CPU thread (``OMP_NUM_THREADS=1``; more threads on a
busy machine can be much slower).

Example:
    >>> result = measure(16, out="runs/effects")        # doctest: +SKIP
    >>> result["comparison"]["knockout_differences"]    # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import pandas as pd

from .. import plot
from ..biqa.comparison import compare
from ..biqa.effects import KnockoutEffects
from ..biqa.patching import PatchingEffects
from ..runs import datasets
from ..runs.engine import run
from ..tracing.loading import load
from .grammar import PROMPTS
from .synthetic import synthetic

__all__ = ["measure"]

NAMES = {"one-stage": "zoo:tiny-biqa-one-stage", "two-stage": "zoo:tiny-biqa-two-stage"}


def measure(n: int = 200, *, seed: int = 1, out: str | Path | None = None, batch_size: int = 16,
            progress: bool = False) -> dict[str, Any]:
    """Run the knockout and patching analyses on both zoo checkpoints and compare them.

    Returns:
        ``{"runs": {name: RunResult}, "comparison": Comparison, "figures": {name: Figure}, "seconds": float}``.
    """
    start = time.perf_counter()
    images, labels = synthetic(n, seed=seed)
    dataset = datasets.from_images(images, labels["mos"].tolist(), name=f"zoo.synthetic({n}, seed={seed})")
    models = {name: load(path) for name, path in NAMES.items()}
    ask = {"prompt": PROMPTS[0], "generate": 48}
    folder = Path(out) if out is not None else None
    runs = {}
    for name, model in models.items():
        other = models["two-stage" if name == "one-stage" else "one-stage"]
        analyses = [KnockoutEffects(**ask), PatchingEffects(other, **ask)]
        runs[name] = run(model, dataset, analyses, out=None if folder is None else folder / name,
                         batch_size=batch_size, progress=progress)
    comparison = compare(runs, n_boot=200)
    figures = {"knockout_effects": plot.knockout_effects(runs, "abs_d_score"),
               "knockout_flips": plot.knockout_effects(runs, "flip_rate"),
               "patching_curve": plot.patching_curve({f"{b}, patched from {a}": runs[b] for a, b in
                                                     (("two-stage", "one-stage"), ("one-stage", "two-stage"))},
                                                    "d_score")}
    if folder is not None:
        comparison.save(folder / "comparison")
        for key, fig in figures.items():
            plot.save(fig, folder / "figures" / f"{key}.png", dpi=110)
        (folder / "report.md").write_text(report(runs, comparison))
    return {"runs": runs, "comparison": comparison, "figures": figures, "seconds": time.perf_counter() - start}


def report(runs: dict[str, Any], comparison: Any) -> str:
    """The tables of a measurement as markdown."""
    lines = ["# Effects of interventions on the zoo checkpoints", ""]
    for name, r in runs.items():
        lines += [f"## {name}", "", "knockout.effects:", "", _markdown(r["knockout.effects"]), "",
                  "patching.effects:", "", _markdown(r["patching.effects"]), "",
                  "summaries:", "", _markdown(r["knockout.summary"]), "", _markdown(r["patching.summary"]), ""]
    differences = comparison["knockout_differences"]
    lines += ["## knockout, two-stage minus one-stage (paired)", "", _markdown(differences), ""]
    return "\n".join(lines)


def _markdown(frame: pd.DataFrame) -> str:
    frame = frame.round(3)
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    return "\n".join([head, rule] + ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlm_lens.zoo.effects", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="held-out synthetic images (default: 200)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the images (default: 1; 0 is training data)")
    parser.add_argument("--out", required=True, help="folder for the runs, tables, figures and report.md")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per batch (default: 16)")
    args = parser.parse_args(argv)
    result = measure(args.n, seed=args.seed, out=args.out, batch_size=args.batch_size, progress=True)
    print((Path(args.out) / "report.md").read_text())
    print(f"{result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
