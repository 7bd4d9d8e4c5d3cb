"""The argument parser of ``vlm-lens``: one sub-command per verb, examples in every ``--help``, and argument types
whose errors are bad usage (exit code 2)."""

from __future__ import annotations

import argparse
import textwrap
from typing import Callable

from ..biqa.vocabulary import ANSWER_PREFIX, DESCRIBE_PROMPT, LEVELS, QALIGN_PROMPT
from .commands.compare import compare_command
from .commands.demo import demo_command
from .commands.evaluate import eval_command
from .commands.fit_lens import fit_lens_command
from .commands.run import run_command
from .commands.trace import trace_command
from .usage import ANALYSES, FORMATS

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback when something fails")
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="also show what transformers prints while loading (progress bars, load reports)")
    parser = argparse.ArgumentParser(
        prog="vlm-lens", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Trace what a vision-language model's layers say: logit lens, attention rows, figures.",
        epilog=_examples("vlm-lens demo", 'vlm-lens trace ckpt/llava-1.5-7b-hf cat.jpg "Rate this image." '
                         "--generate 8 --out runs/cat --html",
                         "vlm-lens run ckpt/llava-1.5-7b-hf koniq_test.csv --out runs/a",
                         "vlm-lens fit-lens ckpt/llava-1.5-7b-hf koniq_train.csv --out lenses/llava",
                         "vlm-lens trace --help"))
    parser.set_defaults(debug=False, verbose=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, examples: list[str], run: Callable[[argparse.Namespace], int]):
        sub = commands.add_parser(name, help=help, description=help, parents=[common],
                                  formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_examples(*examples))
        sub.set_defaults(run=run)
        return sub

    demo = command("demo", "trace the two shipped BIQA checkpoints on synthetic images (and yours): figures + summary",
                   ["vlm-lens demo", "vlm-lens demo my_photo.jpg --n 2 --out /tmp/demo"], demo_command)
    demo.add_argument("images", nargs="*", metavar="IMAGE", help="image files to trace besides the synthetic ones")
    demo.add_argument("--out", type=_folder, default="vlm_lens_demo", metavar="DIR",
                      help="folder for the figures and the summary table (default: %(default)s)")
    demo.add_argument("--n", type=_whole, default=3, metavar="N",
                      help="synthetic images to trace (default: %(default)s)")

    trace = command("trace", "trace one image + prompt: print the answer, the level and the lens where it is decided; "
                    "save the trace, figures and a report",
                    [f'vlm-lens trace ckpt/llava-1.5-7b-hf cat.jpg "{QALIGN_PROMPT}" --prefill',
                     f'vlm-lens trace ckpt/llava-1.5-7b-hf cat.jpg "{QALIGN_PROMPT}" --generate 48 --out runs/cat '
                     "--html",
                     'vlm-lens trace zoo:tiny-biqa-one-stage img.png "Rate this image." --targets good,poor '
                     "--formats png,pdf --out out/"], trace_command)
    trace.add_argument("model", help="checkpoint folder, hub id, or zoo:NAME")
    trace.add_argument("image", help="image file")
    trace.add_argument("prompt", help="the question (the chat template and image placeholder are added)")
    trace.add_argument("--generate", type=_count, default=0, metavar="N",
                       help="generate up to N tokens first (greedy), then trace prompt + answer (default: 0)")
    trace.add_argument("--prefill", nargs="?", const=ANSWER_PREFIX, metavar="TEXT",
                       help=f"start the answer with TEXT (default TEXT: {ANSWER_PREFIX!r}, Q-Align's prefix), so the "
                       "level is decided at the last prompt position without generating")
    trace.add_argument("--position", type=_position, metavar="P",
                       help="read the lens, target words, figures and report at position P (negative: from the end) "
                       "instead of the decision position, where the level is chosen")
    trace.add_argument("--out", type=_folder, metavar="DIR", help="save the trace, lens table and figures to DIR")
    trace.add_argument("--html", action="store_true", help="also write DIR/report.html (DIR default: vlm_lens_trace)")
    trace.add_argument("--topk", type=_positive, default=5, metavar="K", help="lens candidates per layer (default: 5)")
    trace.add_argument("--targets", type=_words, metavar="W1,W2",
                       help=f"words to follow across layers, e.g. {','.join(LEVELS)}")
    trace.add_argument("--formats", type=_formats, default=["png"], metavar="EXT",
                       help="figure formats, comma-separated from png,svg,pdf (default: png)")
    trace.add_argument("--no-figures", dest="figures", action="store_false", help="write no figures")
    trace.add_argument("--system", help="system prompt, where the chat template has a place for it")
    _lens_option(trace)
    trace.add_argument("--dtype", help="weights dtype: float32, bfloat16, float16 (default: as stored)")
    trace.add_argument("--device", help="device, e.g. cuda or cpu (default: cpu)")

    run = command("run", "run analyses over a dataset into a resumable run folder; print what it found",
                  ["vlm-lens run ckpt/llava-1.5-7b-hf koniq_test.csv --out runs/one-stage",
                   "vlm-lens run ckpt/llava-1.5-7b-hf koniq_test.csv --out runs/one-stage --analyses "
                   "quality,instability --samples 8 --batch-size 16 --dtype bfloat16 --device cuda",
                   "vlm-lens run ckpt/llava-1.5-7b-hf q-align/test_live.json --dmos --out runs/live",
                   "vlm-lens run zoo:tiny-biqa-two-stage data.csv --out runs/effects --analyses knockout,patching "
                   "--patch-source zoo:tiny-biqa-one-stage --window 2",
                   "vlm-lens run ckpt/ scores.csv --image-column image_name --score-column MOS --out runs/x"],
                  run_command)
    run.add_argument("model", metavar="MODEL", help="checkpoint folder, hub id, or zoo:NAME")
    run.add_argument("dataset", metavar="DATASET", help="a .csv, or a .json list (Q-Align's format)")
    run.add_argument("--out", type=_folder, required=True, metavar="DIR",
                     help="run folder; an unfinished run there is resumed, a finished one is loaded, not recomputed")
    run.add_argument("--analyses", type=_analysis_names, default=["quality", "attention"], metavar="A,B",
                     help=f"comma-separated, from {', '.join(ANALYSES)} (default: quality,attention)")
    run.add_argument("--batch-size", type=_positive, default=8, metavar="N", help="samples per forward (default: 8)")
    run.add_argument("--checkpoint-every", type=_positive, default=64, metavar="N",
                     help="samples between checkpoints (default: 64)")
    run.add_argument("--overwrite", action="store_true", help="discard a run already in DIR first")
    run.add_argument("--query", type=_queries, metavar="Q1,Q2",
                     help="the attention analysis' reading position(s): decision (default: where the level is "
                     "chosen), level (the level word), last, or a sequence position; several give one attention "
                     "analysis each (tables attention.*, attention_<q>.*)")
    run.add_argument("--html", action="store_true", help="also write DIR/report.html: the run's tables and figures")
    _dataset_options(run, scores_optional=True)
    _question_options(run, run=True)
    _instability_options(run, run=True)
    _lens_option(run)
    _effect_options(run)
    _model_options(run)

    compare = command("compare", "compare runs of the same dataset, paired per sample; the first is the reference",
                      ["vlm-lens compare runs/one-stage runs/two-stage --out cmp/",
                       "vlm-lens compare runs/a runs/b runs/c --names base,sft,rl --out cmp/ --n-boot 2000"],
                      compare_command)
    compare.add_argument("run_a", metavar="RUN_A", help="run folder (the --out of vlm-lens run): the reference")
    compare.add_argument("run_b", metavar="RUN_B", help="run folder compared with RUN_A")
    compare.add_argument("more", nargs="*", metavar="RUN", help="more run folders, each compared with RUN_A")
    compare.add_argument("--out", type=_folder, required=True, metavar="DIR",
                         help="folder for the tables (.parquet + .csv)")
    compare.add_argument("--names", type=_words, metavar="A,B", help="names of the runs (default: the folder names)")
    compare.add_argument("--n-boot", type=_whole, default=1000, metavar="N",
                         help="bootstrap resamples of the correlation intervals and differences (default: 1000)")
    compare.add_argument("--seed", type=_whole, default=0, metavar="S", help="bootstrap seed (default: 0)")
    compare.add_argument("--lens", choices=["logit", "tuned"],
                         help="require the runs' per-layer readings to be read through this kind of lens (default: "
                              "whichever they used, when they agree)")
    compare.add_argument("--alpha", type=_alpha, default=0.05, metavar="A",
                         help="significance level of the Holm-corrected differences listed (default: 0.05)")
    compare.add_argument("--html", action="store_true",
                         help="also write DIR/report.html: the runs' tables and figures side by side")

    evaluate = command("eval", "IQA scores: SRCC / PLCC (+ instability with --samples) of a model on a dataset",
                       ["vlm-lens eval ckpt/llava-1.5-7b-hf koniq_test.csv",
                        "vlm-lens eval ckpt/llava-1.5-7b-hf q-align/test_csiq.json --dmos --out eval/csiq",
                        "vlm-lens eval ckpt/llava-1.5-7b-hf koniq_test.csv --samples 8 --temperature 1.0"],
                       eval_command)
    evaluate.add_argument("model", metavar="MODEL", help="checkpoint folder, hub id, or zoo:NAME")
    evaluate.add_argument("dataset", metavar="DATASET", help="a .csv, or a .json list (Q-Align's format)")
    evaluate.add_argument("--out", type=_folder, metavar="DIR",
                          help="also write DIR/correlations.csv (and DIR/instability.csv with --samples)")
    evaluate.add_argument("--batch-size", type=_positive, default=8, metavar="N",
                          help="samples per forward (default: 8)")
    _dataset_options(evaluate, scores_optional=False)
    _question_options(evaluate, run=False)
    _instability_options(evaluate, run=False)
    _model_options(evaluate)
    fit = command("fit-lens", "fit a tuned lens (one affine translator per layer) of a model on a dataset's images",
                  ["vlm-lens fit-lens ckpt/llava-1.5-7b-hf koniq_train.csv --out lenses/llava",
                   "vlm-lens fit-lens zoo:tiny-biqa-one-stage images.csv --generate 48 --epochs 2 "
                   "--out lenses/one-stage",
                   "vlm-lens trace ckpt/llava-1.5-7b-hf cat.jpg \"Rate this image.\" --lens lenses/llava"],
                  fit_lens_command)
    fit.add_argument("model", metavar="MODEL", help="checkpoint folder, cached hub id, or zoo:NAME")
    fit.add_argument("dataset", metavar="DATASET", help="a .csv, or a .json list (Q-Align's format); scores unused")
    fit.add_argument("--out", required=True, metavar="DIR",
                     help="folder of the lens (and its checkpoints: an unfinished fit there is resumed, a finished "
                          "one loaded)")
    fit.add_argument("--prompt", help="the question asked of every image (default: Q-Align's)")
    fit.add_argument("--generate", type=_count, metavar="N",
                     help="tokens of the greedy answer traced after the prompt (default: 32)")
    fit.add_argument("--epochs", type=_positive, default=1, metavar="N", help="passes over the images (default: 1)")
    fit.add_argument("--batch-size", type=_positive, default=8, metavar="N", help="images per step (default: 8)")
    fit.add_argument("--lr", type=_above_zero, default=1e-3, metavar="LR",
                     help="Adam's learning rate, decaying linearly to 0 (default: 0.001)")
    fit.add_argument("--held-out", type=_fraction, default=0.1, metavar="F",
                     help="fraction of the dataset (its last images) kept out to measure the lens (default: 0.1)")
    fit.add_argument("--seed", type=_whole, default=0, metavar="S", help="seed of the image order (default: 0)")
    fit.add_argument("--checkpoint-every", type=_positive, default=64, metavar="N",
                     help="images between checkpoints (default: 64)")
    fit.add_argument("--overwrite", action="store_true", help="discard a fit already in DIR first")
    group = fit.add_argument_group("dataset")
    group.add_argument("--image-column", metavar="C",
                       help="column (CSV) or key (JSON) of the image paths (default: image; JSON: image or img_path)")
    group.add_argument("--id-column", metavar="C", help="column or key of unique sample ids (default: the image path)")
    group.add_argument("--root", metavar="DIR", help="folder image paths are relative to (default: the file's folder)")
    fit.set_defaults(score_column=None, no_scores=True, dmos=False)  # scores are not used to fit a lens
    _model_options(fit)
    for sub in (run, compare, evaluate, fit):  # for the options argparse accepts one by one but not together
        sub.set_defaults(usage=sub.format_usage)
    return parser


def _dataset_options(sub: argparse.ArgumentParser, scores_optional: bool) -> None:
    group = sub.add_argument_group("dataset")
    group.add_argument("--image-column", metavar="C",
                       help="column (CSV) or key (JSON) of the image paths (default: image; JSON: image or img_path)")
    scores = group.add_mutually_exclusive_group()
    scores.add_argument("--score-column", metavar="C", help="column or key of the scores (default: mos; JSON: "
                        "gt_score)")
    if scores_optional:
        scores.add_argument("--no-scores", action="store_true", help="the dataset has no scores (no correlations)")
    group.add_argument("--id-column", metavar="C", help="column or key of unique sample ids (default: the image path)")
    group.add_argument("--root", metavar="DIR", help="folder image paths are relative to (default: the file's folder)")
    group.add_argument("--dmos", action="store_true",
                       help="lower scores are better (DMOS: LIVE, CSIQ); correlations are taken against -score")


def _question_options(sub: argparse.ArgumentParser, run: bool) -> None:
    group = sub.add_argument_group("question")
    group.add_argument("--prompt", help=f"the question (default: {QALIGN_PROMPT!r}"
                       + (f"; grounding's: {DESCRIBE_PROMPT!r})" if run else ")"))
    group.add_argument("--generate", type=_count, metavar="N",
                       help="tokens to generate per answer (default: " + ("each analysis' own: 0 for quality and "
                            "attention, 2 for instability, 48 for grounding)" if run else "0 for the scores, the level "
                            "is read after the prefilled answer; 2 for the sampled answers)"))
    group.add_argument("--no-prefill", dest="prefill", action="store_false",
                       help=f"do not start the answer with {ANSWER_PREFIX!r} (answers all generated: needs "
                       "--generate, e.g. 48)")
    group.add_argument("--n-boot", type=_whole, default=1000, metavar="N",
                       help="bootstrap resamples of the correlation intervals (default: 1000; 0: no intervals)")
    group.add_argument("--seed", type=_whole, default=0, metavar="S",
                       help="seed of the bootstrap and the sampled answers" + (" (and of grounding's "
                            "cross-validation)" if run else "") + " (default: 0)")


def _instability_options(sub: argparse.ArgumentParser, run: bool) -> None:
    group = sub.add_argument_group("instability", "sampled answers per image: does the level change?"
                                   + ("" if run else " (measured only with --samples)"))
    group.add_argument("--samples", type=_at_least_two, metavar="K",
                       help="answers per image (default: 5)" if run else "measure instability over K answers per image")
    group.add_argument("--temperature", type=_above_zero, metavar="T", help="sampling temperature (default: 1.0)")
    group.add_argument("--top-p", type=_top_p, metavar="P", help="nucleus sampling mass, in (0, 1] (default: 1.0)")


def _lens_option(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--lens", metavar="FOLDER",
                     help="read the layers through the tuned lens in FOLDER (from vlm-lens fit-lens, or a checkpoint "
                          "folder / zoo:NAME holding one in tuned_lens/); default: the logit lens")


def _effect_options(sub: argparse.ArgumentParser) -> None:
    group = sub.add_argument_group("interventions", "knockout: the decision position may not attend to a segment in "
                                   "a window of layers; patching: another checkpoint's residual stream patched in")
    group.add_argument("--segments", type=_words, metavar="A,B",
                       help="positions to knock out (default: image,instruction,description) or patch (default: "
                            "image,decision)")
    group.add_argument("--window", type=_positive, metavar="N", help="decoder layers per knockout window (default: "
                       "a quarter of the layers)")
    group.add_argument("--stride", type=_positive, metavar="N", help="layers between window starts (default: --window)")
    group.add_argument("--patch-source", metavar="MODEL", help="checkpoint whose residual stream is patched in "
                       "(needed by --analyses patching)")


def _model_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--dtype", help="weights dtype: float32, bfloat16, float16 (default: as stored)")
    sub.add_argument("--device", help="device, e.g. cuda or cpu (default: cpu)")


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(textwrap.indent(line, "  ") for line in lines)


def _count(text: str) -> int:
    return _whole(text, " of tokens")


def _positive(text: str) -> int:
    """A count of at least one (of samples, candidates...): said without naming what is counted."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _folder(text: str) -> str:
    """A folder path; the empty string is refused (it would quietly mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder path, got an empty string (it would mean the current "
                                         "folder); name the folder")
    return text


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


def _whole(text: str, of: str = "") -> int:
    """``text`` as an integer >= 0; ``of`` names what is counted in the message (e.g. ``" of tokens"``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number{of} >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number{of} >= 0, got {value}")
    return value


def _fraction(text: str) -> float:
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text}")
    return value


def _at_least_two(text: str) -> int:
    value = _whole(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected at least 2 answers per image, got {value}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _above_zero(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _top_p(text: str) -> float:
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text}")
    return value


def _position(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a sequence position (an integer; negative counts from the end), "
                                         f"got {text!r}") from None


def _alpha(text: str) -> float:
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a significance level between 0 and 1, got {text}")
    return value


def _queries(text: str) -> list[str | int]:
    from ..biqa.vocabulary import ATTENTION_QUERIES

    chosen: list[str | int] = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        if part in ATTENTION_QUERIES:
            chosen.append(part)
        elif part.lstrip("-").isdigit():
            chosen.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"unknown query {part!r}; choose comma-separated from "
                                             f"{','.join(ATTENTION_QUERIES)} or sequence positions")
    if not chosen or len(set(chosen)) != len(chosen):
        raise argparse.ArgumentTypeError(f"expected distinct queries, got {text!r}")
    return chosen


def _analysis_names(text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ANALYSES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown analysis {', '.join(map(repr, unknown)) or repr(text)}; choose "
                                         f"comma-separated from {','.join(ANALYSES)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"each analysis may appear once, got {text!r}")
    return names
