"""``vlm-lens trace``: one image + prompt, printed, saved, drawn and reported — read where the level is decided.

It prints the answer, the level, its Q-Align score and the decision position (the token whose logits choose the
level; :mod:`vlm_lens.biqa.answer`), then the logit lens (and the target words) there; figures and the report read
the same position. ``--position`` reads another one.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..progress import Steps
from .fit_lens import check_lens_folder, load_lens

__all__ = ["trace_command"]


def trace_command(args: argparse.Namespace) -> int:
    from ...core.images import load_image

    load_image(args.image)  # a missing or unreadable image fails now, not after loading a 7B model
    check_lens_folder(args.lens)
    out = Path(args.out) if args.out else (Path("vlm_lens_trace") if args.html else None)
    with Steps(3 + (out is not None) * (1 + args.figures + args.html), "vlm-lens trace", args.verbose) as steps:
        from ...tracing import load, trace

        steps.next("loading the model")
        m = load(args.model, dtype=args.dtype, device=args.device)
        lens = load_lens(args.lens, m)
        steps.next("tracing")
        t = trace(m, args.image, args.prompt, generate=args.generate, system=args.system, prefill=args.prefill)
        position = _summary(t, args.topk, args.targets, args.position, steps, lens)
        if out is not None:
            _write(t, out, args.topk, args.targets, args.formats, args.figures, args.html, position, steps, lens)
    return 0


def _summary(t, topk: int, targets: list[str] | None, chosen: int | None, steps: "Steps", lens=None) -> int:
    """Print the answer, the level and where it is decided, and the lens there; return the position read."""
    from ...biqa.quality import quality
    from ...plot.reading import reading
    from ...plot.trace_data import resolve

    name = "logit lens" if lens is None else lens.name
    steps.next(f"reading the {name}")
    read = reading(t)
    if t.answer:
        steps.write(f"answer: {t.answer}")
    row = quality(t).iloc[0]
    if read.decided:
        how = "generated" if row["generated"] is not None else "most probable level word after the prefilled answer"
        score = f", Q-Align score {row['score']:.3f}" if not math.isnan(row["score"]) else ""
        steps.write(f"level: {row['level']!r} ({how}){score}, decided at the {read.words}")
    else:
        steps.write(f"level: none ({row['no_level_reason']}); no Q-Align score")
    position = read.position if chosen is None else resolve(t, chosen, "--position")
    kind, rest = read.describe(t, position).split(f" {position}", 1)  # "decision position", " (before 'poor')"
    steps.write(f"{name} at position {position}" + (f": the {kind}{rest}:" if kind != "position" else f"{rest}:"))
    table = t.lens(topk=topk, positions=[position], lens=lens)
    steps.write(table.pivot(index="layer", columns="rank", values="token").to_string())
    if targets:
        wide = t.lens_targets(targets, positions=[position], lens=lens).pivot(index="layer", columns="target",
                                                                            values="prob")
        steps.write(f"probability of {', '.join(targets)} by layer there:\n" + wide[targets].round(4).to_string())
    return position


def _write(t, out: Path, topk: int, targets, formats: list[str], figures: bool, html: bool, position: int,
           steps: "Steps", lens=None) -> None:
    from ... import plot
    from ...plot.standard import standard_figures

    from ...core.checks import make_folder

    steps.next("saving the trace")
    out = make_folder(out, "--out")
    folder = t.save(out / "trace")
    t.lens(topk=topk, lens=lens).to_csv(out / "lens_topk.csv", index=False)
    written = [folder, out / "lens_topk.csv"]
    drawn = {}
    if figures:
        steps.next("drawing figures")
        for name, draw in standard_figures(t, position=position, k=topk, targets=targets, lens=lens):
            fig = drawn[name] = draw()
            for ext in formats:
                written.append(plot.save(fig, out / "figures" / f"{name}.{ext}"))
    if html:
        steps.next("writing the HTML report")
        from ...report.html import write_report

        written.append(write_report(t, out / "report.html", topk=topk, targets=targets, position=position,
                                    figures=drawn if figures else False, lens=lens))
    steps.write("wrote:\n" + "\n".join(f"  {p}" for p in written))
