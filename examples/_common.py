"""What every example shares: a model (a checkpoint path, default the shipped trained zoo checkpoint), an image and a
prompt from the command line, one traced sample, and the position where it chooses its quality level.

Run any example without arguments to see it work in seconds on ``zoo:tiny-biqa-one-stage`` and a synthetic image
with known degradations; pass ``--model PATH --image FILE`` to draw the same figure for a real checkpoint (e.g.
``checkpoints/llava-1.5-7b-hf``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import vlm_lens as vl
from vlm_lens.biqa.vocabulary import LEVELS, QALIGN_PROMPT

LEVELS = list(LEVELS)
ONE_STAGE, TWO_STAGE = "zoo:tiny-biqa-one-stage", "zoo:tiny-biqa-two-stage"


def arguments(description: str, models: int = 1) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    if models == 1:
        parser.add_argument("--model", default=ONE_STAGE, help="checkpoint folder or zoo:NAME (default: %(default)s)")
    else:
        parser.add_argument("--model-a", default=ONE_STAGE, help="first checkpoint (default: %(default)s)")
        parser.add_argument("--model-b", default=TWO_STAGE, help="second checkpoint (default: %(default)s)")
    parser.add_argument("--image", help="image file (default: synthetic image --synthetic K of the zoo's seed 1)")
    parser.add_argument("--synthetic", type=int, default=2, metavar="K", help="which synthetic image (default: 2)")
    parser.add_argument("--prompt", default=QALIGN_PROMPT, help="the question (default: %(default)r)")
    parser.add_argument("--generate", type=int, default=48, help="answer tokens to generate at most (default: 48)")
    parser.add_argument("--dtype", help="e.g. bfloat16 for a 7B model on a GPU")
    parser.add_argument("--device", help="e.g. cuda")
    parser.add_argument("--out", default="examples_out", help="output folder (default: %(default)s)")
    parser.add_argument("--format", default="png", choices=["png", "svg", "pdf"], help="figure format")
    parser.add_argument("--dpi", type=int, default=200, help="PNG resolution (default: %(default)s)")
    return parser


def load(path: str, args: argparse.Namespace) -> vl.LensModel:
    return vl.load(path, dtype=args.dtype, device=args.device)


def image(args: argparse.Namespace) -> str:
    """The image file to trace: ``--image``, or synthetic image ``--synthetic`` (known degradations; its ground
    truth is printed) written to the output folder."""
    if args.image:
        return args.image
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = vl.zoo.synthetic(args.synthetic + 1, seed=1)
    path = out / "input.png"
    images[-1].save(path)
    truth = labels.iloc[-1]
    print(f"ground truth of {path}: {truth['answer']} (MOS {truth['mos']:.2f})")
    return str(path)


def trace(args: argparse.Namespace, path: str | None = None) -> vl.Trace:
    model = load(path if path is not None else args.model, args)
    return vl.trace(model, image(args), args.prompt, generate=args.generate)


def decision(t: vl.Trace) -> int:
    """The decision position, whose logits choose the quality level word; without one, the last prompt position
    (the position every figure reads by default, see ``vlm_lens.plot.reading``)."""
    from vlm_lens.plot.reading import reading

    return reading(t).position


def save(args: argparse.Namespace, fig, name: str) -> Path:
    """Write ``fig`` as ``OUT/name.FORMAT`` and say so."""
    from vlm_lens.plot import save as save_figure

    path = save_figure(fig, Path(args.out) / f"{name}.{args.format}", dpi=args.dpi)
    print(f"wrote {path}")
    return path
