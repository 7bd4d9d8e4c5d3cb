"""Markdown tables of zoo evaluations (the numbers docs/zoo.md quotes). Formatting only; nothing is computed here.

Example:
    >>> print(markdown([ev_one, ev_two]))   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["markdown"]


def markdown(evaluations: Sequence) -> str:
    """The summary, per-type, attention-by-layer and logit-lens tables of several :class:`.evaluate.Evaluation`."""
    names = [ev.name for ev in evaluations]
    first = evaluations[0].metrics
    lines = [f"Held-out synthetic images: {first['n']} per model.", "", "| metric | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    rows = [("SRCC (Q-Align score vs MOS)", "srcc", "{:.3f}"), ("PLCC", "plcc", "{:.3f}"),
            ("level word accuracy", "level_accuracy", "{:.3f}"), ("answers with a level word", "coverage", "{:.3f}"),
            ("description exactly right", "description_exact", "{:.3f}"),
            ("min per-type precision", "min_precision", "{:.3f}"), ("min per-type recall", "min_recall", "{:.3f}"),
            ("instability (level changes across samples)", "instability", "{:.1%}"),
            ("sampled level != greedy level", "sample_disagreement", "{:.1%}"),
            ("attention on image (mean over layers)", "attention_image_mean", "{:.3f}"),
            ("attention on description (mean over layers)", "attention_description_mean", "{:.3f}"),
            ("lens: first top-1 layer (mean)", "lens_first_top1_mean", "{:.2f}"),
            ("lens: first top-1 layer (median)", "lens_first_top1_median", "{:.1f}"),
            ("lens: stays top-1 from layer (mean)", "lens_stays_top1_mean", "{:.2f}")]
    for title, key, fmt in rows:
        values = [fmt.format(ev.metrics[key]) if key in ev.metrics else "-" for ev in evaluations]
        lines.append(f"| {title} | " + " | ".join(values) + " |")
    lines += ["", "Per degradation type: precision / recall of naming it, severity-word accuracy where named.", "",
              "| type | support | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for t, stats in first["types"].items():
        cells = []
        for ev in evaluations:
            s = ev.metrics["types"][t]
            cells.append(f"{s['precision']:.3f} / {s['recall']:.3f} / {s['severity_accuracy']:.3f}")
        lines.append(f"| {t} | {stats['support']} | " + " | ".join(cells) + " |")
    lines += ["", "Attention mass of the decision position (the one that emits the level word), mean over heads "
              "and images: image / description / other.", "",
              "| decoder layer (1 = first block) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, layer in enumerate(evaluations[0].attention["layer"]):
        cells = []
        for ev in evaluations:
            row = ev.attention.iloc[i]
            cells.append(f"{row['image']:.3f} / {row['description']:.3f} / {row['other']:.3f}")
        lines.append(f"| {int(layer)} | " + " | ".join(cells) + " |")
    lines += ["", "Logit lens at the decision position: number of images whose final level word is first top-1 at "
              "each hidden-state index (0 = decoder input).", "",
              "| hidden index | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for layer in evaluations[0].lens["layer"]:
        lines.append(f"| {int(layer)} | " + " | ".join(str(int(ev.lens.iloc[int(layer)]['first_top1']))
                                                       for ev in evaluations) + " |")
    return "\n".join(lines) + "\n"
