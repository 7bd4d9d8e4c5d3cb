"""What every example shares: a model (a checkpoint path, or a tiny random-init LLaVA built on the spot), an image
and a prompt from the command line, and one traced sample.

Run any example without arguments to see it work in seconds on a tiny model; pass ``--model PATH --image FILE``
to draw the same figure for a real checkpoint (e.g. ``checkpoints/llava-1.5-7b-hf``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import vlm_lens as vl

QUESTION = "How would you rate the quality of this image?"
LEVELS = ["excellent", "good", "fair", "poor", "bad"]


def arguments(description: str, models: int = 1) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    if models == 1:
        parser.add_argument("--model", help="checkpoint folder or zoo:NAME (default: a tiny random-init LLaVA)")
    else:
        parser.add_argument("--model-a", help="first checkpoint (default: a tiny random-init LLaVA)")
        parser.add_argument("--model-b", help="second checkpoint (default: another tiny random-init LLaVA)")
    parser.add_argument("--image", help="image file (default: a synthetic test image)")
    parser.add_argument("--prompt", default=QUESTION, help="the question (default: %(default)r)")
    parser.add_argument("--generate", type=int, default=8, help="answer tokens to generate (default: 8)")
    parser.add_argument("--dtype", help="e.g. bfloat16 for a 7B model on a GPU")
    parser.add_argument("--device", help="e.g. cuda")
    parser.add_argument("--out", default="examples_out", help="output folder (default: %(default)s)")
    parser.add_argument("--format", default="png", choices=["png", "svg", "pdf"], help="figure format")
    parser.add_argument("--dpi", type=int, default=200, help="PNG resolution (default: %(default)s)")
    return parser


def load(path: str | None, args: argparse.Namespace, seed: int = 0) -> vl.LensModel:
    """The checkpoint at ``path``, or a tiny random-init LLaVA (its words are noise; the figure's form is real)."""
    if path is None:
        from vlm_lens.tiny import tiny_llava

        path = tiny_llava(tempfile.mkdtemp(prefix="vlm_lens_example_"), layers=6, seed=seed)
    return vl.load(path, dtype=args.dtype, device=args.device)


def image(args: argparse.Namespace) -> str:
    """The image file to trace: ``--image``, or a synthetic picture (a gradient with a blurred half) written to
    the output folder."""
    if args.image:
        return args.image
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:96, 0:128]
    rgb = np.stack([x * 2, y * 2, 255 - x - y], axis=-1).clip(0, 255).astype(np.uint8)
    rgb[:, 64:] = (rgb[:, 64:].astype(float) * 0.6 + 40).astype(np.uint8)
    path = out / "input.png"
    Image.fromarray(rgb).save(path)
    return str(path)


def trace(args: argparse.Namespace, path: str | None = None, seed: int = 0) -> vl.Trace:
    model = load(path if path is not None else getattr(args, "model", None), args, seed)
    return vl.trace(model, image(args), args.prompt, generate=args.generate)


def save(args: argparse.Namespace, fig, name: str) -> Path:
    """Write ``fig`` as ``OUT/name.FORMAT`` and say so."""
    from vlm_lens.plot import save as save_figure

    path = save_figure(fig, Path(args.out) / f"{name}.{args.format}", dpi=args.dpi)
    print(f"wrote {path}")
    return path
