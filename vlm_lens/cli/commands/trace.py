"""``vlm-lens trace``: one image + prompt, printed, saved, drawn and reported."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from ..progress import Steps

__all__ = ["trace_command"]


def trace_command(args: argparse.Namespace) -> int:
    from ...core.images import load_image

    load_image(args.image)  # a missing or unreadable image fails now, not after loading a 7B model
    out = Path(args.out) if args.out else (Path("vlm_lens_trace") if args.html else None)
    with Steps(3 + (out is not None) * (1 + args.figures + args.html), "vlm-lens trace") as steps:
        from ...tracing import load, trace

        steps.next("loading the model")
        m = load(args.model, dtype=args.dtype, device=args.device)
        steps.next("tracing")
        t = trace(m, args.image, args.prompt, generate=args.generate, system=args.system)
        _summary(t, args.topk, args.targets, steps)
        if out is not None:
            _write(t, out, args.topk, args.targets, args.formats, args.figures, args.html, steps)
    return 0


def _summary(t, topk: int, targets: list[str] | None, steps: "Steps") -> None:
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
           steps: "Steps") -> None:
    from ... import plot

    from ...core.checks import make_folder

    steps.next("saving the trace")
    out = make_folder(out, "--out")
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
        from ...report.html import write_report

        written.append(write_report(t, out / "report.html", topk=topk, targets=targets,
                                    figures=drawn if figures else False))
    steps.write("wrote:\n" + "\n".join(f"  {p}" for p in written))
