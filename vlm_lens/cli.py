"""``vlm-lens``: the verbs of vlm_lens from the shell. A thin layer: parse, call the Python API, print.

Exit codes: 0 done, 1 failed (a VlmLensError, said in one line; ``--debug`` for the traceback), 2 bad usage.

Example:
    $ vlm-lens demo
    $ vlm-lens trace path/to/llava-1.5-7b-hf img.jpg "How would you rate the quality of this image?" --generate 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]

LEVELS = ["excellent", "good", "fair", "poor", "bad"]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from .errors import VlmLensError

    try:
        return args.run(args)
    except VlmLensError as err:
        if args.debug:
            raise
        print(f"vlm-lens {args.command}: error: {err}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm-lens", description="Trace what a vision-language model's layers say.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command")

    demo = commands.add_parser("demo", help="trace a small model on a synthetic image and write figures",
                               epilog="example: vlm-lens demo --out vlm_lens_demo")
    demo.add_argument("--out", default="vlm_lens_demo", help="folder for figures and tables (default: %(default)s)")
    demo.set_defaults(run=_demo)

    trace = commands.add_parser("trace", help="trace one image + prompt",
                                epilog='example: vlm-lens trace ckpt/ img.jpg "Rate this image." --generate 8')
    trace.add_argument("model", help="checkpoint folder, cached hub id, or zoo:NAME")
    trace.add_argument("image", help="image file")
    trace.add_argument("prompt", help="the question")
    trace.add_argument("--generate", type=int, default=0, help="tokens to generate before tracing")
    trace.add_argument("--topk", type=int, default=3, help="lens candidates per layer (default: %(default)s)")
    trace.add_argument("--out", help="save the trace and a latent-output figure to this folder")
    trace.set_defaults(run=_trace)
    return parser


def _trace(args: argparse.Namespace) -> int:
    import vlm_lens as vl

    m = vl.load(args.model)
    t = vl.trace(m, args.image, args.prompt, generate=args.generate)
    if t.answer:
        print(f"answer: {t.answer}")
    table = t.lens(topk=args.topk, positions=[t.prompt_length - 1])
    print(table.to_string(index=False))
    if args.out:
        folder = t.save(args.out)
        from .plot import latent_output

        latent_output(t).savefig(folder / "latent_output.png", dpi=120)
        print(f"wrote {folder}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import tempfile

    import numpy as np
    from PIL import Image

    import vlm_lens as vl
    from .plot import latent_output
    from .tiny import tiny_llava

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("building a tiny random-init LLaVA (the trained zoo checkpoints are not shipped yet)")
    m = vl.load(tiny_llava(tempfile.mkdtemp(prefix="vlm_lens_tiny_"), layers=4))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    t = vl.trace(m, image, "How would you rate the quality of this image?", generate=6)
    print(f"answer: {t.answer!r}")
    print(t.lens(topk=1, positions=[t.prompt_length - 1]).to_string(index=False))
    print(t.lens_targets(LEVELS, positions=[t.prompt_length - 1])
          .pivot(index="layer", columns="target", values="prob")[LEVELS].round(4).to_string())
    latent_output(t).savefig(out / "latent_output.png", dpi=120)
    t.save(out / "trace")
    print(f"wrote {out / 'latent_output.png'} and {out / 'trace'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
