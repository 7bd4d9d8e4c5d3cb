"""``vlm-lens``: the verbs of vlm_lens from the shell. A thin layer: parse, call the Python API, print, write files.

Exit codes: 0 done, 1 failed (said in one line; ``--debug`` shows the traceback), 2 bad usage (argparse's message
and the usage line). ``--help`` on every command shows examples.

Example:
    $ vlm-lens demo
    $ vlm-lens trace path/to/llava-1.5-7b-hf img.jpg "How would you rate the quality of this image?" \\
          --generate 8 --out runs/img --html
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["main"]

LEVELS = ["excellent", "good", "fair", "poor", "bad"]
FORMATS = ("png", "svg", "pdf")
QUESTION = "How would you rate the quality of this image?"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vlm-lens`` with ``argv`` (default: the process arguments) and return the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or bad usage (2, message already printed)
        return int(exit_.code or 0)
    if not getattr(args, "command", None):
        parser.print_usage(sys.stderr)
        print("vlm-lens: error: choose a command (demo, trace, run, compare, eval); see vlm-lens --help",
              file=sys.stderr)
        return 2
    from .errors import VlmLensError

    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"vlm-lens {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the shell gets one line; --debug gets the traceback
        if args.debug:
            raise
        kind = "" if isinstance(err, VlmLensError) else f"{type(err).__name__}: "
        hint = "" if isinstance(err, VlmLensError) else " (run with --debug for the traceback)"
        message = " ".join(str(err).split())
        print(f"vlm-lens {args.command}: error: {kind}{message}{hint}", file=sys.stderr)
        return 1


# ------------------------------------------------------------------------------------------------------ parser
def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback when something fails")
    parser = argparse.ArgumentParser(
        prog="vlm-lens", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Trace what a vision-language model's layers say: logit lens, attention rows, figures.",
        epilog=_examples("vlm-lens demo", 'vlm-lens trace ckpt/llava-1.5-7b-hf cat.jpg "Rate this image." '
                         "--generate 8 --out runs/cat --html", "vlm-lens trace --help"))
    parser.set_defaults(debug=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, examples: list[str], run: Callable[[argparse.Namespace], int]):
        sub = commands.add_parser(name, help=help, description=help, parents=[common],
                                  formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_examples(*examples))
        sub.set_defaults(run=run)
        return sub

    demo = command("demo", "trace a tiny model on a synthetic image; write figures and an HTML report",
                   ["vlm-lens demo", "vlm-lens demo --out /tmp/demo"], _demo)
    demo.add_argument("--out", default="vlm_lens_demo", metavar="DIR",
                      help="folder for the trace, figures and report (default: %(default)s)")

    trace = command("trace", "trace one image + prompt: print the lens, save the trace, figures and a report",
                    [f'vlm-lens trace ckpt/llava-1.5-7b-hf cat.jpg "{QUESTION}"',
                     f'vlm-lens trace ckpt/llava-1.5-7b-hf cat.jpg "{QUESTION}" --generate 8 --out runs/cat --html',
                     'vlm-lens trace zoo:tiny-biqa-one-stage img.png "Rate this image." --targets good,poor '
                     "--formats png,pdf --out out/"], _trace)
    trace.add_argument("model", help="checkpoint folder, cached hub id, or zoo:NAME")
    trace.add_argument("image", help="image file")
    trace.add_argument("prompt", help="the question (the chat template and image placeholder are added)")
    trace.add_argument("--generate", type=_count, default=0, metavar="N",
                       help="generate up to N tokens first (greedy), then trace prompt + answer (default: 0)")
    trace.add_argument("--out", metavar="DIR", help="save the trace, lens table and figures to DIR")
    trace.add_argument("--html", action="store_true", help="also write DIR/report.html (DIR default: vlm_lens_trace)")
    trace.add_argument("--topk", type=_positive, default=5, metavar="K", help="lens candidates per layer (default: 5)")
    trace.add_argument("--targets", type=_words, metavar="W1,W2",
                       help=f"words to follow across layers, e.g. {','.join(LEVELS)}")
    trace.add_argument("--formats", type=_formats, default=["png"], metavar="EXT",
                       help="figure formats, comma-separated from png,svg,pdf (default: png)")
    trace.add_argument("--no-figures", dest="figures", action="store_false", help="write no figures")
    trace.add_argument("--system", help="system prompt, where the chat template has a place for it")
    trace.add_argument("--dtype", help="weights dtype: float32, bfloat16, float16 (default: as stored)")
    trace.add_argument("--device", help="device, e.g. cuda or cpu (default: cpu)")

    run = command("run", "run analyses over a dataset (not available yet)",
                  ["vlm-lens run ckpt/ koniq_test.csv --out runs/one-stage --analyses lens,attention"], _later)
    run.add_argument("model")
    run.add_argument("dataset")
    run.add_argument("--out", required=True, metavar="DIR")
    run.add_argument("--analyses", nargs="*", default=None)
    compare = command("compare", "compare two runs of the same dataset (not available yet)",
                      ["vlm-lens compare runs/one-stage runs/two-stage --out cmp/"], _later)
    compare.add_argument("run_a")
    compare.add_argument("run_b")
    compare.add_argument("--out", required=True, metavar="DIR")
    evaluate = command("eval", "IQA scores: SRCC / PLCC / instability table (not available yet)",
                       ["vlm-lens eval ckpt/ koniq_test.csv"], _later)
    evaluate.add_argument("model")
    evaluate.add_argument("dataset")
    return parser


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(textwrap.indent(line, "  ") for line in lines)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of tokens >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of tokens >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _words(text: str) -> list[str]:
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        raise argparse.ArgumentTypeError(f"expected comma-separated words, got {text!r}")
    return words


def _formats(text: str) -> list[str]:
    chosen = [f.strip().lower().lstrip(".") for f in text.split(",") if f.strip()]
    bad = [f for f in chosen if f not in FORMATS]
    if bad or not chosen:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(FORMATS)}, got {text!r}")
    return chosen


# ---------------------------------------------------------------------------------------------------- commands
def _trace(args: argparse.Namespace) -> int:
    from .images import load_image

    load_image(args.image)  # a missing or unreadable image fails now, not after loading a 7B model
    out = Path(args.out) if args.out else (Path("vlm_lens_trace") if args.html else None)
    with _Steps(3 + (out is not None) * (1 + args.figures + args.html), "vlm-lens trace") as steps:
        import vlm_lens as vl

        steps.next("loading the model")
        m = vl.load(args.model, dtype=args.dtype, device=args.device)
        steps.next("tracing")
        t = vl.trace(m, args.image, args.prompt, generate=args.generate, system=args.system)
        _summary(t, args.topk, args.targets, steps)
        if out is not None:
            _write(t, out, args.topk, args.targets, args.formats, args.figures, args.html, steps)
    return 0


def _demo(args: argparse.Namespace) -> int:
    import tempfile

    import numpy as np
    from PIL import Image

    out = Path(args.out)
    with _Steps(6, "vlm-lens demo") as steps:
        import vlm_lens as vl

        from .tiny import tiny_llava

        steps.next("building a tiny random-init LLaVA")
        with tempfile.TemporaryDirectory(prefix="vlm_lens_tiny_") as folder:  # loaded into memory, then removed
            m = vl.load(tiny_llava(Path(folder) / "tiny-llava", layers=4))
        steps.next("tracing a synthetic image")
        rng = np.random.default_rng(0)
        image_path = out / "image.png"
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(image_path)
        t = vl.trace(m, str(image_path), QUESTION, generate=6)
        steps.write("(a random-init model: its words are noise; the shapes and the tooling are what the demo shows)")
        _summary(t, 3, LEVELS, steps)
        _write(t, out, 5, LEVELS, ["png"], True, True, steps)
    return 0


def _later(args: argparse.Namespace) -> int:
    from .errors import VlmLensError

    raise VlmLensError(f"'vlm-lens {args.command}' is not available yet in this version; use 'vlm-lens trace' "
                       "for one sample.")


# ------------------------------------------------------------------------------------------------------ shared
def _summary(t, topk: int, targets: list[str] | None, steps: "_Steps") -> None:
    steps.next("reading the logit lens")
    position = t.prompt_length - 1
    if t.answer:
        steps.write(f"answer: {t.answer}")
    steps.write(f"logit lens at position {position} (predicts the first answer token):")
    table = t.lens(topk=topk, positions=[position])
    steps.write(table.pivot(index="layer", columns="rank", values="token").to_string())
    if targets:
        wide = t.lens_targets(targets, positions=[position]).pivot(index="layer", columns="target", values="prob")
        steps.write(wide[targets].round(4).to_string())


def _write(t, out: Path, topk: int, targets, formats: list[str], figures: bool, html: bool,
           steps: "_Steps") -> None:
    from . import plot

    steps.next("saving the trace")
    out.mkdir(parents=True, exist_ok=True)
    folder = t.save(out / "trace")
    t.lens(topk=topk).to_csv(out / "lens_topk.csv", index=False)
    written = [folder, out / "lens_topk.csv"]
    drawn = {}
    if figures:
        steps.next("drawing figures")
        draws: list[tuple[str, Callable[[], Any]]] = [("latent_output", lambda: plot.latent_output(t)),
                                                      ("topk", lambda: plot.topk(t, k=topk))]
        if targets:
            draws.append(("target_words", lambda: plot.target_words(t, targets)))
        if t.attention is not None:
            draws += [("attention", lambda: plot.attention(t)), ("attention_mass", lambda: plot.attention_mass(t))]
            if any(span.layout for span in t.image_spans):
                draws.append(("patch_overlay", lambda: plot.patch_overlay(t)))
        for name, draw in draws:
            fig = drawn[name] = draw()
            for ext in formats:
                written.append(plot.save(fig, out / "figures" / f"{name}.{ext}"))
    if html:
        steps.next("writing the HTML report")
        from .report import write_report

        written.append(write_report(t, out / "report.html", topk=topk, targets=targets,
                                    figures=drawn if figures else False))
    steps.write("wrote:\n" + "\n".join(f"  {p}" for p in written))


class _Steps:
    """A progress bar over the stages of a command (on stderr, shown only on a terminal); prints go around it."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.bar, self.started, self.restore = total, label, None, False, None

    def __enter__(self) -> "_Steps":
        from tqdm.auto import tqdm
        from transformers.utils import logging as hf_logging

        if hf_logging.is_progress_bar_enabled():  # one progress display: ours, not transformers' per-shard bars
            hf_logging.disable_progress_bar()
            self.restore = hf_logging.enable_progress_bar
        self.bar = tqdm(total=self.total, desc=self.label, file=sys.stderr, leave=False,
                        disable=not sys.stderr.isatty(), bar_format="{desc} {bar:20} {n_fmt}/{total_fmt}{postfix}")
        return self

    def next(self, what: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_postfix_str(what)

    def write(self, text: str) -> None:
        self.bar.write(text, file=sys.stdout)

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None and self.started:
            self.bar.update(1)
        self.bar.close()
        if self.restore is not None:
            self.restore()


if __name__ == "__main__":
    raise SystemExit(main())
