"""``vlm-lens run``: analyses over a dataset into a resumable run folder, on :func:`vlm_lens.run`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from ...core.errors import RunMismatchError
from ..progress import Steps
from ..usage import UsageError
from .dataset_args import check_decided, check_sampling, dataset_of, instability_of, question_of
from .fit_lens import check_lens_folder, load_lens
from .tables import correlations_text, written

__all__ = ["run_command"]


def run_command(args: argparse.Namespace) -> int:
    check_sampling(args, "instability" in args.analyses, "add it, e.g. --analyses quality,instability")
    _check_effects(args)
    check_decided(args, reads_level=bool({"quality", "attention"} & set(args.analyses)))
    if args.query is not None and "attention" not in args.analyses:
        raise UsageError("--query sets the reading position of the attention analysis, which is not asked for; add "
                         "it, e.g. --analyses quality,attention")
    dataset = dataset_of(args)  # a missing or malformed dataset fails now, not after loading a 7B model
    check_lens_folder(args.lens)
    out = Path(args.out)
    before = None if args.overwrite else _status(out)
    with Steps(3 + args.html, "vlm-lens run", args.verbose) as steps:
        from ...runs import run
        from ...tracing import load

        steps.next("loading the model" + (" and the patch source" if args.patch_source else ""))
        m = load(args.model, dtype=args.dtype, device=args.device)
        lens = load_lens(args.lens, m)
        source = load(args.patch_source, dtype=args.dtype, device=args.device) if args.patch_source else None
        analyses = _analyses(args, source, lens)
        steps.next(f"running {len(dataset)} samples")
        try:
            result = run(m, dataset, analyses, out=out, batch_size=args.batch_size,
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
        if args.html:
            from ...report.runs import write_run_report

            steps.next("writing the HTML report")
            steps.write(f"wrote {write_run_report({out.name or 'run': result}, out / 'report.html')}")
    return 0


def _check_effects(args: argparse.Namespace) -> None:
    """Options of the intervention analyses only with them (said before anything loads)."""
    knockout, patching = "knockout" in args.analyses, "patching" in args.analyses
    if patching and not args.patch_source:
        raise UsageError("--analyses patching needs --patch-source MODEL: the checkpoint whose residual stream is "
                         "patched in")
    given = [flag for flag, value, used in (("--patch-source", args.patch_source, patching),
                                            ("--window", args.window, knockout), ("--stride", args.stride, knockout),
                                            ("--segments", args.segments, knockout or patching)) if value and not used]
    if given:
        raise UsageError(f"{', '.join(given)} set(s) an intervention analysis that is not asked for; add it, e.g. "
                         "--analyses knockout,patching (see vlm-lens run --help)")


def _analyses(args: argparse.Namespace, source: Any = None, lens: Any = None) -> list:
    """``--analyses`` names -> reducers, each given the options that concern it (library defaults otherwise); the
    ones that read layers read them through ``lens`` when given (``--lens``)."""
    from ...biqa import analyses

    question = question_of(args)
    effects = {k: v for k, v in question.items() if k != "prefill" or not v}  # answers generated unless asked
    segments = {"segments": args.segments} if args.segments else {}
    build: dict[str, Callable[[], Any]] = {
        "quality": lambda: analyses.Quality(n_boot=args.n_boot, seed=args.seed, lens=True if lens is None else lens,
                                            **question),
        "attention": lambda: _attention(args, question),
        "instability": lambda: instability_of(args, question, lens),
        "grounding": lambda: analyses.Grounding(seed=args.seed, **{k: v for k, v in question.items()
                                                                   if k != "prefill"}),
        "knockout": lambda: analyses.KnockoutEffects(window=args.window, stride=args.stride, **segments, **effects),
        "patching": lambda: analyses.PatchingEffects(source, **segments, **effects),
    }
    built = [build[name]() for name in args.analyses]
    return [a for item in built for a in (item if isinstance(item, list) else [item])]


def _attention(args: argparse.Namespace, question: dict[str, Any]) -> list:
    """One attention analysis per ``--query`` (the first keeps the table prefix ``attention``, the others are named
    ``attention_<query>``)."""
    from ...biqa import analyses

    queries = args.query or ["decision"]
    out = [analyses.Attention(query=queries[0], **question)]
    for query in queries[1:]:
        name = f"attention_{query}" if isinstance(query, str) else f"attention_pos{query}".replace("-", "m")
        out.append(analyses.Attention(query=query, **question).named(name))
    return out


def _status(out: Path) -> str | None:
    """The status of the run already in ``out`` ("running" or "done"), or None."""
    import json

    try:
        return json.loads((out / "run.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


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
        steps.write(correlations_text(correlations, ["score"], meta["dataset"]["higher_is_better"]))
    if "instability.summary" in result.tables:
        steps.write("instability:\n" + result["instability.summary"].round(4).to_string(index=False))
    for analysis, columns in (("knockout", ["segment", "window", "n", "d_score", "abs_d_score", "flip_rate"]),
                              ("patching", ["segment", "layer", "n", "d_score", "abs_d_score", "flip_rate"])):
        if f"{analysis}.effects" in result.tables:
            steps.write(f"{analysis} effects at the decision position:\n"
                        + result[f"{analysis}.effects"][columns].round(3).to_string(index=False))
    steps.write(written(result.tables, result.folder / "results", "skipped, meta.json"))
