"""What ``run`` and ``eval`` read from their shared options: the dataset, the question, the sampled answers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..usage import DATASET_SUFFIXES, UsageError

__all__ = ["check_decided", "check_sampling", "dataset_of", "instability_of", "question_of"]


def check_sampling(args: argparse.Namespace, asked: bool, fix: str) -> None:
    given = [flag for flag, value in (("--samples", args.samples), ("--temperature", args.temperature),
                                      ("--top-p", args.top_p)) if value is not None]
    if given and not asked:
        raise UsageError(f"{', '.join(given)} set(s) the sampled answers of the instability analysis, which is not "
                          f"asked for; {fix} (see vlm-lens {args.command} --help)")


def check_decided(args: argparse.Namespace, reads_level: bool) -> None:
    """``--no-prefill`` without ``--generate``: nothing would hold a level, and a score read at the last prompt
    position (where the model is about to write "the") would be a number without a meaning. Refused as bad usage."""
    if reads_level and not args.prefill and not args.generate:
        raise UsageError("--no-prefill without --generate: the level is neither prefilled nor generated, so there is "
                         "no position where the model decides it; add --generate N (e.g. 48) to read the level in "
                         "the generated answer, or drop --no-prefill (Q-Align: the answer starts with 'The quality "
                         "of the image is')")


def dataset_of(args: argparse.Namespace):
    """The dataset named on the command line; the loaders' warnings (missing images) become one line each."""
    import warnings

    path = Path(args.dataset)
    if path.suffix.lower() not in DATASET_SUFFIXES:  # checked here, not by argparse: a missing --out is said first
        raise UsageError(f"DATASET: expected a .csv or .json file (Q-Align's format), got {args.dataset!r}")
    from ...runs import datasets
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


def question_of(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments every analysis that asks the Q-Align way shares: prompt, generate (when given), prefill."""
    given = {"prompt": args.prompt, "generate": args.generate}
    return {**{k: v for k, v in given.items() if v is not None}, "prefill": args.prefill}


def instability_of(args: argparse.Namespace, question: dict[str, Any], lens: Any = None):
    from ...biqa.instability import Instability

    given = {"k": args.samples, "temperature": args.temperature, "top_p": args.top_p}
    return Instability(**{k: v for k, v in given.items() if v is not None}, seed=args.seed, lens=lens, **question)
