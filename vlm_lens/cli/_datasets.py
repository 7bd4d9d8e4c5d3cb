"""``vlm-lens run``, ``compare`` and ``eval``: dataset runs from the shell, on :func:`vlm_lens.run`,
:func:`vlm_lens.compare` and :func:`vlm_lens.evaluate`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from ..errors import RunMismatchError
from ._common import DATASET_SUFFIXES, Steps, UsageError

__all__ = ["compare_command", "eval_command", "run_command"]


def run_command(args: argparse.Namespace) -> int:
    _check_sampling(args, "instability" in args.analyses, "add it, e.g. --analyses quality,instability")
    dataset = _dataset(args)  # a missing or malformed dataset fails now, not after loading a 7B model
    analyses = _analyses(args)
    out = Path(args.out)
    before = None if args.overwrite else _status(out)
    with Steps(3, "vlm-lens run") as steps:
        import vlm_lens as vl

        steps.next("loading the model")
        m = vl.load(args.model, dtype=args.dtype, device=args.device)
        steps.next(f"running {len(dataset)} samples")
        try:
            result = vl.run(m, dataset, analyses, out=out, batch_size=args.batch_size,
                            checkpoint_every=args.checkpoint_every, progress=sys.stderr.isatty(),
                            overwrite=args.overwrite)
        except RunMismatchError as err:  # said in the shell's terms: --out / --overwrite, not out= / overwrite=True
            raise RunMismatchError(
                f"--out {err.folder} holds a run of a different model or with different arguments; resuming would "
                f"mix results. Differences (stored -> now): {'; '.join(err.differences[:8])}. Choose another --out "
                "folder, or add --overwrite to discard the stored run.", err.folder, err.differences) from None
        steps.next("summarising")
        if before == "done":
            steps.write(f"{out} already held this finished run: loaded, not recomputed (--overwrite redoes it)")
        elif before == "running":
            steps.write(f"resumed the unfinished run in {out}")
        _run_summary(result, steps)
    return 0


def compare_command(args: argparse.Namespace) -> int:
    folders = [args.run_a, args.run_b, *args.more]
    names = _run_names(folders, args.names)
    with Steps(3, "vlm-lens compare") as steps:
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


def eval_command(args: argparse.Namespace) -> int:
    _check_sampling(args, args.samples is not None, "ask for it with --samples K")
    dataset = _dataset(args)
    question = _question(args)
    instability = _instability(args, question) if args.samples is not None else None  # bad settings fail now
    with Steps(2 + (instability is not None) + (args.out is not None), "vlm-lens eval") as steps:
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


def _check_sampling(args: argparse.Namespace, asked: bool, fix: str) -> None:
    given = [flag for flag, value in (("--samples", args.samples), ("--temperature", args.temperature),
                                      ("--top-p", args.top_p)) if value is not None]
    if given and not asked:
        raise UsageError(f"{', '.join(given)} set(s) the sampled answers of the instability analysis, which is not "
                          f"asked for; {fix} (see vlm-lens {args.command} --help)")


def _dataset(args: argparse.Namespace):
    """The dataset named on the command line; the loaders' warnings (missing images) become one line each."""
    import warnings

    from .. import datasets

    path = Path(args.dataset)
    if path.suffix.lower() not in DATASET_SUFFIXES:  # checked here, not by argparse: a missing --out is said first
        raise UsageError(f"DATASET: expected a .csv or .json file (Q-Align's format), got {args.dataset!r}")
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
    from ..instability import Instability

    given = {"k": args.samples, "temperature": args.temperature, "top_p": args.top_p}
    return Instability(**{k: v for k, v in given.items() if v is not None}, seed=args.seed, **question)


def _analyses(args: argparse.Namespace) -> list:
    """``--analyses`` names -> reducers, each given the options that concern it (library defaults otherwise)."""
    from .. import analyses

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
            raise UsageError(f"--names: expected {len(folders)} different names, one per run, got {','.join(names)}")
        return names
    short = [(p.parent if p.name == "results" else p).name or str(p) for p in map(Path, folders)]
    if len(set(short)) == len(short):
        return short
    if len(set(folders)) == len(folders):
        return folders
    raise UsageError("the same run folder is given twice; name the runs with --names A,B")


def _no_samples(dataset: str, n: int) -> Exception:
    from ..errors import VlmLensError

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


def _run_summary(result, steps: "Steps") -> None:
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


def _compare_summary(comparison, steps: "Steps") -> None:
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
