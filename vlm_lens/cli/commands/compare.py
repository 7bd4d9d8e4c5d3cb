"""``vlm-lens compare``: runs of the same dataset compared, paired per sample, on :func:`vlm_lens.compare`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..progress import Steps
from ..usage import UsageError
from .tables import correlations_text, written

__all__ = ["compare_command"]


def compare_command(args: argparse.Namespace) -> int:
    folders = [args.run_a, args.run_b, *args.more]
    names = _run_names(folders, args.names)
    with Steps(3 + args.html, "vlm-lens compare", args.verbose) as steps:
        from ...biqa.comparison import compare
        from ...runs import RunResult

        steps.next("reading the runs")
        runs = {name: RunResult.load(folder) for name, folder in zip(names, folders)}
        steps.next("comparing")
        comparison = compare(runs, n_boot=args.n_boot, seed=args.seed, alpha=args.alpha, lens=args.lens)
        steps.next("saving the tables")
        out = comparison.save(args.out)
        _compare_summary(comparison, steps, args.alpha)
        steps.write(written(comparison.tables, out, "comparison.json"))
        if args.html:
            from ...report.runs import write_run_report

            steps.next("writing the HTML report")
            steps.write(f"wrote {write_run_report(runs, out / 'report.html', comparison=comparison)}")
    return 0


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


def _compare_summary(comparison, steps: "Steps", alpha: float = 0.05) -> None:
    tables, reference = comparison.tables, comparison.runs[0]
    steps.write(f"runs: {', '.join(comparison.runs)}; differences are each run minus {reference}, paired per sample")
    if "correlations" in tables:
        steps.write(correlations_text(tables["correlations"], ["run", "score"]))
        steps.write("correlation differences (paired bootstrap):\n"
                    + tables["correlation_differences"].round(4).to_string(index=False))
    for name, frame in tables.items():
        if name.endswith("_differences") and name != "correlation_differences" and len(frame):
            n = int((frame["p_adjusted"] < alpha).sum())
            steps.write(f"{name}: {n} of {len(frame)} differences significant (Holm-adjusted p < {alpha:g}, "
                        f"corrected over the {len(frame)} tests of the table)")
    significant = tables.get("significant")
    if significant is not None and len(significant):
        shown = significant[["table", "what", "value_a", "value_b", "diff", "p_adjusted"]]
        steps.write(f"significant differences ({len(significant)}; significant.csv):\n"
                    + shown.head(30).round(4).to_string(index=False)
                    + (f"\n... and {len(significant) - 30} more" if len(significant) > 30 else ""))
    if "instability" in tables:
        steps.write("instability:\n" + tables["instability"].round(4).to_string(index=False))
        steps.write(tables["instability_differences"].round(4).to_string(index=False))
    for note in comparison.notes:
        steps.write(f"note: {note}")
