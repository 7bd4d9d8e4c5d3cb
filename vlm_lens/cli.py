"""``vlm-lens``: the verbs of vlm_lens from the shell. A thin layer: parse, call the Python API, print, write files.

Exit codes: 0 done, 1 failed (said in one line; ``--debug`` shows the traceback), 2 bad usage (argparse's message
and the usage line). ``--help`` on every command shows examples.

Example:
    $ vlm-lens demo
    $ vlm-lens trace path/to/llava-1.5-7b-hf img.jpg "How would you rate the quality of this image?" \\
          --generate 8 --out runs/img --html
    $ vlm-lens run path/to/llava-1.5-7b-hf koniq_test.csv --out runs/one-stage
    $ vlm-lens eval path/to/llava-1.5-7b-hf q-align/test_live.json --dmos
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Sequence

from .answer import LEVELS as _LEVELS

LEVELS = list(_LEVELS)

__all__ = ["main"]

FORMATS = ("png", "svg", "pdf")
QUESTION = "How would you rate the quality of this image?"
#: The analyses ``vlm-lens run --analyses`` knows, by their ``Reducer.name`` (the classes live in vlm_lens.analyses).
ANALYSES = ("quality", "attention", "instability", "grounding")
DATASET_SUFFIXES = (".csv", ".json")


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
    except _UsageError as err:  # options argparse accepts one by one, not together: said as argparse says it
        print(f"{args.usage()}vlm-lens {args.command}: error: {err}", file=sys.stderr)
        return 2
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
                         "--generate 8 --out runs/cat --html",
                         "vlm-lens run ckpt/llava-1.5-7b-hf koniq_test.csv --out runs/a", "vlm-lens trace --help"))
    parser.set_defaults(debug=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, examples: list[str], run: Callable[[argparse.Namespace], int]):
        sub = commands.add_parser(name, help=help, description=help, parents=[common],
                                  formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_examples(*examples))
        sub.set_defaults(run=run)
        return sub

    demo = command("demo", "trace the two shipped BIQA checkpoints on synthetic images (and yours): figures + summary",
                   ["vlm-lens demo", "vlm-lens demo my_photo.jpg --n 2 --out /tmp/demo"], _demo)
    demo.add_argument("images", nargs="*", metavar="IMAGE", help="image files to trace besides the synthetic ones")
    demo.add_argument("--out", default="vlm_lens_demo", metavar="DIR",
                      help="folder for the figures and the summary table (default: %(default)s)")
    demo.add_argument("--n", type=_count, default=3, metavar="N",
                      help="synthetic images to trace (default: %(default)s)")

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

    run = command("run", "run analyses over a dataset into a resumable run folder; print what it found",
                  ["vlm-lens run ckpt/llava-1.5-7b-hf koniq_test.csv --out runs/one-stage",
                   "vlm-lens run ckpt/llava-1.5-7b-hf koniq_test.csv --out runs/one-stage --analyses "
                   "quality,instability --samples 8 --batch-size 16 --dtype bfloat16 --device cuda",
                   "vlm-lens run ckpt/llava-1.5-7b-hf q-align/test_live.json --dmos --out runs/live",
                   "vlm-lens run ckpt/ scores.csv --image-column image_name --score-column MOS --out runs/x"], _run)
    run.add_argument("model", metavar="MODEL", help="checkpoint folder, cached hub id, or zoo:NAME")
    run.add_argument("dataset", metavar="DATASET", help="a .csv, or a .json list (Q-Align's format)")
    run.add_argument("--out", required=True, metavar="DIR",
                     help="run folder; an unfinished run there is resumed, a finished one is loaded, not recomputed")
    run.add_argument("--analyses", type=_analysis_names, default=["quality", "attention"], metavar="A,B",
                     help=f"comma-separated, from {','.join(ANALYSES)} (default: quality,attention)")
    run.add_argument("--batch-size", type=_positive, default=8, metavar="N", help="samples per forward (default: 8)")
    run.add_argument("--checkpoint-every", type=_positive, default=64, metavar="N",
                     help="samples between checkpoints (default: 64)")
    run.add_argument("--overwrite", action="store_true", help="discard a run already in DIR first")
    _dataset_options(run, scores_optional=True)
    _question_options(run, run=True)
    _instability_options(run, run=True)
    _model_options(run)

    compare = command("compare", "compare runs of the same dataset, paired per sample; the first is the reference",
                      ["vlm-lens compare runs/one-stage runs/two-stage --out cmp/",
                       "vlm-lens compare runs/a runs/b runs/c --names base,sft,rl --out cmp/ --n-boot 2000"],
                      _compare)
    compare.add_argument("run_a", metavar="RUN_A", help="run folder (the --out of vlm-lens run): the reference")
    compare.add_argument("run_b", metavar="RUN_B", help="run folder compared with RUN_A")
    compare.add_argument("more", nargs="*", metavar="RUN", help="more run folders, each compared with RUN_A")
    compare.add_argument("--out", required=True, metavar="DIR", help="folder for the tables (.parquet + .csv)")
    compare.add_argument("--names", type=_words, metavar="A,B", help="names of the runs (default: the folder names)")
    compare.add_argument("--n-boot", type=_whole, default=1000, metavar="N",
                         help="bootstrap resamples of the correlation intervals and differences (default: 1000)")
    compare.add_argument("--seed", type=_whole, default=0, metavar="S", help="bootstrap seed (default: 0)")

    evaluate = command("eval", "IQA scores: SRCC / PLCC (+ instability with --samples) of a model on a dataset",
                       ["vlm-lens eval ckpt/llava-1.5-7b-hf koniq_test.csv",
                        "vlm-lens eval ckpt/llava-1.5-7b-hf q-align/test_csiq.json --dmos --out eval/csiq",
                        "vlm-lens eval ckpt/llava-1.5-7b-hf koniq_test.csv --samples 8 --temperature 1.0"], _eval)
    evaluate.add_argument("model", metavar="MODEL", help="checkpoint folder, cached hub id, or zoo:NAME")
    evaluate.add_argument("dataset", metavar="DATASET", help="a .csv, or a .json list (Q-Align's format)")
    evaluate.add_argument("--out", metavar="DIR",
                          help="also write DIR/correlations.csv (and DIR/instability.csv with --samples)")
    evaluate.add_argument("--batch-size", type=_positive, default=8, metavar="N",
                          help="samples per forward (default: 8)")
    _dataset_options(evaluate, scores_optional=False)
    _question_options(evaluate, run=False)
    _instability_options(evaluate, run=False)
    _model_options(evaluate)
    for sub in (run, compare, evaluate):  # for the options argparse accepts one by one but not together
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
    group.add_argument("--prompt", help="the question (default: Q-Align's"
                       + ("; grounding asks for a description)" if run else ")"))
    group.add_argument("--generate", type=_count, metavar="N",
                       help="tokens to generate per answer (default: " + ("each analysis' own: 0 for quality and "
                            "attention, 2 for instability, 48 for grounding)" if run else "0 for the scores, the level "
                            "is read after the prefilled answer; 2 for the sampled answers)"))
    group.add_argument("--no-prefill", dest="prefill", action="store_false",
                       help="do not start the answer with 'The quality of the image is' (answers all generated)")
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


def _model_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--dtype", help="weights dtype: float32, bfloat16, float16 (default: as stored)")
    sub.add_argument("--device", help="device, e.g. cuda or cpu (default: cpu)")


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


def _whole(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
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


def _analysis_names(text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ANALYSES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown analysis {', '.join(map(repr, unknown)) or repr(text)}; choose "
                                         f"comma-separated from {','.join(ANALYSES)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"each analysis may appear once, got {text!r}")
    return names


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
    from .demo import demo

    demo(args.out, images=args.images, n=args.n)
    return 0


def _run(args: argparse.Namespace) -> int:
    _check_sampling(args, "instability" in args.analyses, "add it, e.g. --analyses quality,instability")
    dataset = _dataset(args)  # a missing or malformed dataset fails now, not after loading a 7B model
    analyses = _analyses(args)
    out = Path(args.out)
    before = None if args.overwrite else _status(out)
    with _Steps(3, "vlm-lens run") as steps:
        import vlm_lens as vl

        steps.next("loading the model")
        m = vl.load(args.model, dtype=args.dtype, device=args.device)
        steps.next(f"running {len(dataset)} samples")
        result = vl.run(m, dataset, analyses, out=out, batch_size=args.batch_size,
                        checkpoint_every=args.checkpoint_every, progress=sys.stderr.isatty(), overwrite=args.overwrite)
        steps.next("summarising")
        if before == "done":
            steps.write(f"{out} already held this finished run: loaded, not recomputed (--overwrite redoes it)")
        elif before == "running":
            steps.write(f"resumed the unfinished run in {out}")
        _run_summary(result, steps)
    return 0


def _compare(args: argparse.Namespace) -> int:
    folders = [args.run_a, args.run_b, *args.more]
    names = _run_names(folders, args.names)
    with _Steps(3, "vlm-lens compare") as steps:
        import vlm_lens as vl

        steps.next("reading the runs")
        runs = {name: vl.RunResult.load(folder) for name, folder in zip(names, folders)}
        steps.next("comparing")
        comparison = vl.compare(runs, n_boot=args.n_boot, seed=args.seed)
        steps.next("saving the tables")
        out = comparison.save(args.out)
        _compare_summary(comparison, steps)
        steps.write(_written(comparison.tables, out, "comparison.json"))
    return 0


def _eval(args: argparse.Namespace) -> int:
    _check_sampling(args, args.samples is not None, "ask for it with --samples K")
    dataset = _dataset(args)
    question = _question(args)
    instability = _instability(args, question) if args.samples is not None else None  # bad settings fail now
    with _Steps(2 + (instability is not None) + (args.out is not None), "vlm-lens eval") as steps:
        import vlm_lens as vl

        steps.next("loading the model")
        m = vl.load(args.model, dtype=args.dtype, device=args.device)
        steps.next(f"scoring {len(dataset)} samples")
        tty = sys.stderr.isatty()
        table = vl.evaluate(m, dataset, batch_size=args.batch_size, progress=tty, n_boot=args.n_boot,
                            seed=args.seed, **question)
        if not len(table):
            raise _no_samples(args.dataset, len(dataset))
        tables = {"correlations": table}
        if instability is not None:
            steps.next(f"asking every image {instability.k} times")
            unstable = vl.run(m, dataset, [instability], batch_size=args.batch_size, progress=tty)
            tables["instability"] = unstable["instability.summary"]
        analysed = int(table["n"].iloc[0] + table["n_missing"].iloc[0])
        steps.write(f"{dataset.name}: {len(dataset)} samples, {analysed} scored, {len(dataset) - analysed} skipped "
                    f"(missing or unreadable images); {int(table['n_missing'].iloc[0])} without a level")
        steps.write(_correlations(table, ["score"], dataset.higher_is_better))
        if "instability" in tables:
            steps.write("instability (level changes over sampled answers):\n"
                        + tables["instability"].round(4).to_string(index=False))
        if args.out is not None:
            steps.next("writing the tables")
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            for name, frame in tables.items():
                frame.to_csv(out / f"{name}.csv", index=False)
            steps.write("wrote:\n" + "\n".join(f"  {out / name}.csv" for name in tables))
    return 0


# ----------------------------------------------------------------------------------------- dataset commands
class _UsageError(Exception):
    """Options that argparse accepts one by one but not together; ``main`` answers exit code 2."""


def _check_sampling(args: argparse.Namespace, asked: bool, fix: str) -> None:
    given = [flag for flag, value in (("--samples", args.samples), ("--temperature", args.temperature),
                                      ("--top-p", args.top_p)) if value is not None]
    if given and not asked:
        raise _UsageError(f"{', '.join(given)} set(s) the sampled answers of the instability analysis, which is not "
                          f"asked for; {fix} (see vlm-lens {args.command} --help)")


def _dataset(args: argparse.Namespace):
    """The dataset named on the command line; the loaders' warnings (missing images) become one line each."""
    import warnings

    from . import datasets

    path = Path(args.dataset)
    if path.suffix.lower() not in DATASET_SUFFIXES:  # checked here, not by argparse: a missing --out is said first
        raise _UsageError(f"DATASET: expected a .csv or .json file (Q-Align's format), got {args.dataset!r}")
    given = {"image": args.image_column, "score": args.score_column, "id": args.id_column, "root": args.root}
    kwargs = {k: v for k, v in given.items() if v is not None}
    if getattr(args, "no_scores", False):
        kwargs["score"] = None
    load = datasets.from_json if path.suffix.lower() == ".json" else datasets.from_csv
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        dataset = load(path, higher_is_better=not args.dmos, **kwargs)
    for warning in caught:
        print(f"vlm-lens {args.command}: warning: {' '.join(str(warning.message).split())}", file=sys.stderr)
    return dataset


def _question(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments every analysis that asks the Q-Align way shares: prompt, generate (when given), prefill."""
    given = {"prompt": args.prompt, "generate": args.generate}
    return {**{k: v for k, v in given.items() if v is not None}, "prefill": args.prefill}


def _instability(args: argparse.Namespace, question: dict[str, Any]):
    from .instability import Instability

    given = {"k": args.samples, "temperature": args.temperature, "top_p": args.top_p}
    return Instability(**{k: v for k, v in given.items() if v is not None}, seed=args.seed, **question)


def _analyses(args: argparse.Namespace) -> list:
    """``--analyses`` names -> reducers, each given the options that concern it (library defaults otherwise)."""
    from . import analyses

    question = _question(args)
    build: dict[str, Callable[[], Any]] = {
        "quality": lambda: analyses.Quality(n_boot=args.n_boot, seed=args.seed, **question),
        "attention": lambda: analyses.Attention(**question),
        "instability": lambda: _instability(args, question),
        "grounding": lambda: analyses.Grounding(seed=args.seed, **{k: v for k, v in question.items()
                                                                   if k != "prefill"}),
    }
    return [build[name]() for name in args.analyses]


def _status(out: Path) -> str | None:
    """The status of the run already in ``out`` ("running" or "done"), or None."""
    import json

    try:
        return json.loads((out / "run.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def _run_names(folders: list[str], names: list[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(folders) or len(set(names)) != len(names):
            raise _UsageError(f"--names: expected {len(folders)} different names, one per run, got {','.join(names)}")
        return names
    short = [(p.parent if p.name == "results" else p).name or str(p) for p in map(Path, folders)]
    if len(set(short)) == len(short):
        return short
    if len(set(folders)) == len(folders):
        return folders
    raise _UsageError("the same run folder is given twice; name the runs with --names A,B")


def _no_samples(dataset: str, n: int) -> Exception:
    from .errors import VlmLensError

    return VlmLensError(f"{dataset!r}: none of its {n} images could be read (see the warnings above); nothing to "
                        "correlate. Check the image paths, or --root.")


METRIC_NAMES = {"srcc": "SRCC", "plcc": "PLCC", "plcc_logistic": "PLCC (logistic)"}


def _correlations(frame, keys: list[str], higher_is_better: bool = True) -> str:
    """One row per ``keys`` and one column per metric, each ``value [low, high]`` (the bootstrap interval)."""
    import math

    cells = [f"{v:.4f}" + ("" if math.isnan(lo) or math.isnan(hi) else f" [{lo:.4f}, {hi:.4f}]")
             for v, lo, hi in zip(frame["value"], frame["low"].astype(float), frame["high"].astype(float))]
    wide = frame.assign(cell=cells).pivot(index=keys, columns="metric", values="cell")
    order = list(dict.fromkeys(frame[keys].itertuples(index=False, name=None)))  # as given, not sorted
    wide = wide.loc[order if len(keys) > 1 else [key for key, in order], list(dict.fromkeys(frame["metric"]))]
    wide["n"] = frame.groupby(keys, sort=False)["n"].first()
    said = [] if higher_is_better else ["DMOS: taken against -score"]
    said.append("value [95% bootstrap interval]" if frame["low"].notna().any() else "no intervals")
    return (f"correlations with the scores ({'; '.join(said)}):\n"
            + wide.rename(columns=METRIC_NAMES).reset_index().to_string(index=False))


def _run_summary(result, steps: "_Steps") -> None:
    meta, skipped = result.meta, result.skipped
    steps.write(f"{meta['dataset']['name']}: {meta['n_samples']} samples, {meta['n_done']} analysed, "
                f"{meta['n_skipped']} skipped")
    for row in skipped.head(5).itertuples():
        steps.write(f"  skipped {row.id}: {' '.join(str(row.reason).split())}")
    if len(skipped) > 5:
        steps.write(f"  ... and {len(skipped) - 5} more (skipped.csv)")
    correlations = result.tables.get("quality.correlations")
    if correlations is not None and len(correlations):
        steps.write(_correlations(correlations, ["score"], meta["dataset"]["higher_is_better"]))
    if "instability.summary" in result.tables:
        steps.write("instability:\n" + result["instability.summary"].round(4).to_string(index=False))
    steps.write(_written(result.tables, result.folder / "results", "skipped, meta.json"))


def _compare_summary(comparison, steps: "_Steps") -> None:
    tables, reference = comparison.tables, comparison.runs[0]
    steps.write(f"runs: {', '.join(comparison.runs)}; differences are each run minus {reference}, paired per sample")
    if "correlations" in tables:
        steps.write(_correlations(tables["correlations"], ["run", "score"]))
        steps.write("correlation differences (paired bootstrap):\n"
                    + tables["correlation_differences"].round(4).to_string(index=False))
    for name, what in (("layer_differences", "(layer, quantity)"), ("attention_differences", "(layer, segment)")):
        if name in tables:
            p = tables[name]["p"]
            steps.write(f"{name}: {int((p < 0.05).sum())} of {len(p)} {what} differences with p < 0.05")
    if "instability" in tables:
        steps.write("instability:\n" + tables["instability"].round(4).to_string(index=False))
        steps.write(tables["instability_differences"].round(4).to_string(index=False))
    for note in comparison.notes:
        steps.write(f"note: {note}")


def _written(tables: dict, folder: Path, also: str) -> str:
    width = max(map(len, tables), default=0)
    rows = [f"  {name:<{width}}  {len(frame):>7} rows" for name, frame in sorted(tables.items())]
    return f"wrote {len(tables)} tables to {folder} (each .parquet + .csv; and {also}):\n" + "\n".join(rows)


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
