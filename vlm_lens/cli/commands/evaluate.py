"""``vlm-lens eval``: SRCC / PLCC (and instability) of a model on a dataset, on :func:`vlm_lens.evaluate`."""

from __future__ import annotations

import argparse
import sys
from ..progress import Steps
from .dataset_args import check_decided, check_sampling, dataset_of, instability_of, question_of
from .tables import correlations_text

__all__ = ["eval_command"]


def eval_command(args: argparse.Namespace) -> int:
    check_sampling(args, args.samples is not None, "ask for it with --samples K")
    check_decided(args, reads_level=True)
    dataset = dataset_of(args)
    question = question_of(args)
    instability = instability_of(args, question) if args.samples is not None else None  # bad settings fail now
    with Steps(2 + (instability is not None) + (args.out is not None), "vlm-lens eval",
               args.verbose) as steps:
        from ...biqa.evaluation import evaluate
        from ...core.checks import make_folder
        from ...runs import run
        from ...tracing import load

        steps.next("loading the model")
        m = load(args.model, dtype=args.dtype, device=args.device)
        steps.next(f"scoring {len(dataset)} samples")
        tty = sys.stderr.isatty()
        table = evaluate(m, dataset, batch_size=args.batch_size, progress=tty, n_boot=args.n_boot,
                            seed=args.seed, **question)
        if not len(table):
            raise _no_samples(args.dataset, len(dataset))
        tables = {"correlations": table}
        if instability is not None:
            steps.next(f"asking every image {instability.k} times")
            unstable = run(m, dataset, [instability], batch_size=args.batch_size, progress=tty)
            tables["instability"] = unstable["instability.summary"]
        analysed = int(table["n"].iloc[0] + table["n_missing"].iloc[0])
        steps.write(f"{dataset.name}: {len(dataset)} samples, {analysed} scored, {len(dataset) - analysed} skipped "
                    f"(missing or unreadable images); {int(table['n_missing'].iloc[0])} without a level")
        steps.write(correlations_text(table, ["score"], dataset.higher_is_better))
        if "instability" in tables:
            steps.write("instability (level changes over sampled answers):\n"
                        + tables["instability"].round(4).to_string(index=False))
        if args.out is not None:
            steps.next("writing the tables")
            out = make_folder(args.out, "--out")
            for name, frame in tables.items():
                frame.to_csv(out / f"{name}.csv", index=False)
            steps.write("wrote:\n" + "\n".join(f"  {out / name}.csv" for name in tables))
    return 0


def _no_samples(dataset: str, n: int) -> Exception:
    from ...core.errors import VlmLensError

    return VlmLensError(f"{dataset!r}: none of its {n} images could be read (see the warnings above); nothing to "
                        "correlate. Check the image paths, or --root.")
