"""``write_report``: one self-contained HTML page of a Trace, to look at and to send.

The page shows the sequence with every token coloured by its BIQA segment (system / image / instruction /
description / answer; each image folds into one chip that opens onto its patch tokens); hovering over a token shows
its logit-lens top-k at every layer, clicking pins it, ← / → walk along the text. It opens on the decision position
(the token whose logits choose the level, underlined; :mod:`vlm_lens.plot.reading`), which every figure reads too,
and every caption names the position it shows. Below come the figures of :mod:`vlm_lens.plot` (click one to see it
at full size) and the input images.

Self-contained means: figures and images are embedded as base64 PNG, the data as JSON, the code is a few lines of
vanilla JavaScript, and a Content-Security-Policy forbids the page to load anything (no CDN, no fonts, no network):
it opens the same offline, in a mail attachment, or in ten years.

Example:
    >>> import tempfile, pathlib, numpy as np, vlm_lens as vl
    >>> from vlm_lens.testing import tiny_llava
    >>> from vlm_lens.report import write_report
    >>> m = vl.load(tiny_llava(tempfile.mkdtemp(), layers=2))
    >>> t = vl.trace(m, np.zeros((32, 32, 3), np.uint8), "rate the quality of this image", generate=2)
    >>> path = write_report(t, pathlib.Path(tempfile.mkdtemp()) / "report.html", figures=False)
    >>> "vlm-lens-data" in path.read_text()
    True
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..biqa.vocabulary import BIQA_SEGMENTS
from ..core.errors import VlmLensError
from ..plot.attention import picture_note
from ..plot.reading import reading

if TYPE_CHECKING:
    from ..tracing.lens import Lens
    from ..tracing.record import Trace

__all__ = ["write_report"]

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = TEMPLATES / "report.html"

#: Captions of the figures the report draws, by name; ``{where}`` is the position read, in words.
CAPTIONS = {
    "latent_output": "Logit lens: the top-1 token of every layer at the positions up to the {where} (outlined), "
                     "coloured by its probability.",
    "topk": "Top-k candidates per layer at the {where}; the final output is highlighted.",
    "target_words": "Probability of the target words across layers at the {where}.",
    "attention": "Attention of the {where} over the context, per layer (heads averaged; image tokens summed into "
                 "one column).",
    "attention_mass": "The same attention summed by segment (the description and the answer apart).",
    "patch_overlay": "The same attention at the last layer, on the image's patch grid (transparent where low).",
    "knockout_effects": "Mean effect on the level of cutting the decision position's attention to each segment, per "
                        "window of decoder layers (vl.plot.knockout_effects).",
    "patching_curve": "Mean effect on the level of patching another checkpoint's residual stream, per hidden index "
                      "(vl.plot.patching_curve).",
}


def write_report(trace: "Trace", path: str | Path, *, topk: int = 5, positions: Sequence[int] | None = None,
                 targets: Sequence[str | int] | None = None, image: Any = None, figures: bool | Mapping = True,
                 title: str | None = None, max_image_positions: int = 256, dpi: int = 110,
                 position: int | None = None, lens: "Lens | None" = None) -> Path:
    """Write ``trace`` as one self-contained HTML file.

    Args:
        trace: The trace. Without a model attached (a trace loaded from disk without ``model=``), the page has the
            tokens, attention figures and images, but no lens top-k.
        path: The ``.html`` file to write (its folder is created).
        topk: Lens candidates per layer shown for each position.
        positions: Positions whose top-k the page holds. Default: every text position, and the image positions
            too when the images hold at most ``max_image_positions`` tokens in all.
        targets: Words (or token ids) whose probability across layers gets a figure (e.g. the IQA levels).
        image: The input picture(s) to embed (a path / PIL image or a list of them); default the image paths
            recorded in the trace, when they still exist.
        figures: Include the figures (latent output, top-k, target words, attention, attention mass, patch
            overlay), all read at the decision position; or a mapping ``name -> Figure`` of figures already drawn,
            embedded as they are, each captioned with its own title (which says the position it shows).
        title: Page title (default: from the model name).
        max_image_positions: See ``positions``.
        dpi: Resolution of the embedded figures.
        position: The position the page opens on and the figures read (default: the decision position, where the
            level is chosen; without one, the last prompt position).
        lens: The lens the page's top-k tables and lens figures read the layers through: None for the logit lens,
            or a lens of the trace's model (e.g. a :class:`~vlm_lens.TunedLens`); the page names it.

    Returns:
        The path written.

    Example:
        >>> write_report(t, "report.html", targets=["good", "poor"])           # doctest: +SKIP
    """
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise VlmLensError(f"path={str(path)!r}: a report is an HTML file; give it an .html suffix.")
    if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
        raise VlmLensError(f"topk={topk!r}: expected an integer >= 1.")
    notes: list[str] = []
    if position is not None:
        from ..plot.trace_data import resolve

        position = resolve(trace, position, "position")
    data = _data(trace, topk, positions, max_image_positions, notes, position, lens)
    if isinstance(figures, Mapping):
        parts = [[(name, caption_of(fig), _png(fig, dpi)) for name, fig in figures.items()]]
    else:
        parts = [_figures(trace, targets, topk, dpi, notes, position, lens)] if figures else []
    pictures = _pictures(trace, image, notes)
    name = str(trace.meta.get("model", "")) or "a model"
    title = title or f"vlm_lens trace: {Path(name).name or name}"
    body = _body(trace, title, pictures, parts[0] if parts else [], notes, _lens_title(lens))
    page = fill(TEMPLATE, title, body).replace("__VLM_LENS_DATA__", _json_for_script(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------- data
def _data(trace: "Trace", k: int, positions: Sequence[int] | None, max_image: int, notes: list[str],
          position: int | None = None, lens: "Lens | None" = None) -> dict:
    tokens = trace.tokens
    segments = tokens["segment"].tolist()
    kept = set(int(p) for p in trace.positions.tolist())
    n_image = sum(1 for s in segments if s == "image")
    if positions is None:
        wanted = [p for p in range(len(tokens)) if p in kept and (segments[p] != "image" or n_image <= max_image)]
        if n_image > max_image:
            notes.append(f"lens top-k of the {n_image} image tokens left out (more than {max_image}); pass "
                         "positions= or max_image_positions= to include them.")
    else:
        from ..plot.trace_data import resolve

        wanted = sorted({resolve(trace, p, "positions") for p in positions})
    topk: dict[str, list] = {}
    lens_note = ""
    if trace.model is None:
        lens_note = "no lens: this trace has no model attached (Trace.load(path, model=vl.load(...)))."
        notes.append(lens_note)
    elif wanted:
        table = trace.lens(topk=k, positions=wanted, lens=lens)
        for pos, rows in table.groupby("pos", sort=True):
            per_layer = [[[str(tok), round(float(p), 5)] for tok, p in zip(g["token"], g["prob"])]
                         for _, g in rows.groupby("layer", sort=True)]
            topk[str(int(pos))] = per_layer
    images = []
    for span in trace.image_spans:
        row = span.layout[0].cols if span.layout else 32
        images.append({"index": span.image_index, "span": [span.start, span.stop],
                       "grid": list(span.grid) if span.grid else None, "row": row})
    read = reading(trace)
    start = position if position is not None else read.position
    start = start if start in kept else (max(kept) if kept else 0)
    return {"tokens": [[int(p), int(i), str(t), str(s)] for p, i, t, s in
                       zip(tokens["pos"], tokens["id"], tokens["text"], tokens["segment"])],
            "segments": list(read.labels), "decision": read.position if read.decided else None,
            "layers": [int(l) for l in trace.layers], "k": k, "topk": topk, "images": images,
            "start": start, "lens_note": lens_note}


def _json_for_script(data: dict) -> str:
    # Inside <script>, "</script>" or "<!--" in a token's text would end the element early: escape every "<".
    return json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")


# ------------------------------------------------------------------------------------------------------ figures
def _figures(trace: "Trace", targets, k: int, dpi: int, notes: list[str],
             position: int | None, lens: "Lens | None" = None) -> list[tuple[str, str, str]]:
    from ..plot.standard import standard_figures

    out = []
    read = reading(trace)
    where = read.words if position is None else read.describe(trace, position)
    for name, draw in standard_figures(trace, position=position, k=k, targets=targets, lens=lens):
        caption = _caption(CAPTIONS[name].format(where=where), lens)
        try:
            fig = draw()
        except VlmLensError as err:  # e.g. target words the vocabulary lacks: say so on the page, keep the rest
            notes.append(f"{name}: {err}")
            continue
        out.append((name, caption, _png(fig, dpi)))
    if trace.attention is None:
        notes.append("no attention figures: this trace holds no attention rows.")
    return out


def _lens_title(lens: "Lens | None") -> str:
    """``"Logit lens"`` or ``"Tuned lens"``: how the page names the lens it reads the layers through."""
    from ..plot.trace_data import lens_name

    name = lens_name(lens)
    return name[:1].upper() + name[1:]


def _caption(caption: str, lens: "Lens | None") -> str:
    """A caption written for the logit lens, naming the lens the figure was read through."""
    return caption.replace("Logit lens", _lens_title(lens))


def _png(fig, dpi: int) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def caption_of(fig) -> str:
    """A figure drawn elsewhere, captioned by what it says of itself: its title (which names the position)."""
    suptitle = fig.get_suptitle() if hasattr(fig, "get_suptitle") else ""
    title = suptitle or next((ax.get_title() for ax in fig.axes if ax.get_title()), "")
    return "; ".join(" ".join(line.split()) for line in title.splitlines() if line.strip())


def fill(template: Path, title: str, body: str) -> str:
    """A page of ``template`` with its title, body, the shared style sheet and the click-to-enlarge script."""
    page = template.read_text(encoding="utf-8")
    return (page.replace("__VLM_LENS_STYLE__", (TEMPLATES / "style.css").read_text(encoding="utf-8"))
                .replace("__VLM_LENS_LIGHTBOX__", (TEMPLATES / "lightbox.js").read_text(encoding="utf-8"))
                .replace("__VLM_LENS_TITLE__", html.escape(title))
                .replace("__VLM_LENS_BODY__", body))


def _pictures(trace: "Trace", image: Any, notes: list[str]) -> list[str]:
    from ..core.images import load_image

    if image is None:
        recorded = trace.meta.get("images") or []
        candidates = [p for p in recorded if Path(str(p)).is_file()]
        for k in range(len(trace.image_spans)):
            if k >= len(recorded) or not Path(str(recorded[k])).is_file():
                notes.append(f"input image {k} is not shown: {picture_note(trace, k)}.")
    else:
        candidates = list(image) if isinstance(image, (list, tuple)) else [image]
    out = []
    for k, candidate in enumerate(candidates):
        picture = load_image(candidate, argument=f"image[{k}]")
        picture.thumbnail((512, 512))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


# --------------------------------------------------------------------------------------------------------- html
def _intervention_text(record: Mapping[str, Any]) -> str:
    """One line per intervention of ``Trace.meta["interventions"]``: what acted where."""
    resolved = record.get("resolved") or {}
    layers = record.get("layers")
    if record.get("kind") == "knockout":
        heads = "" if record.get("heads") is None else f", heads {record['heads']}"
        return (f"knockout: positions {resolved.get('queries')} may not attend to {resolved.get('keys')} "
                f"({record.get('queries')} -> {record.get('keys')}), decoder layers {layers}{heads}")
    what = f"value {record.get('value')}" if record.get("kind") == "ablation" else \
        f"from {(record.get('source') or {}).get('model')} at {resolved.get('source_positions')}"
    return f"{record.get('kind')}: positions {resolved.get('positions')} ({record.get('positions')}) at hidden " \
           f"indices {layers}, {what}"


def _body(trace: "Trace", title: str, pictures: list[str], figures: list[tuple[str, str, str]],
          notes: list[str], lens_title: str = "Logit lens") -> str:
    e = html.escape
    counts = trace.tokens["segment"].value_counts()
    meta = trace.meta
    rows = [("model", meta.get("model", "")), ("family", meta.get("family", "")), ("prompt", meta.get("prompt", "")),
            ("answer", trace.answer or "(nothing generated)"), ("level", _level_words(trace)),
            ("positions", f"{len(trace.tokens)} ({', '.join(f'{s} {n}' for s, n in counts.items())})"),
            ("layers", f"{len(trace.layers)} hidden states ({trace.layers[0]}..{trace.layers[-1]})"),
            ("vlm_lens", meta.get("vlm_lens_version", ""))]
    rows[4:4] = [("intervention", _intervention_text(record)) for record in meta.get("interventions") or []]
    meta_html = "".join(f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in rows)
    legend = "".join(f'<span><i style="background:var(--{s})"></i>{s}</span>' for s in BIQA_SEGMENTS)
    figure_html = figures_html(figures)
    picture_html = "".join(f'<img alt="input image {k}" src="data:image/png;base64,{b64}">'
                           for k, b64 in enumerate(pictures))
    notes_html = "".join(f"<li>{e(n)}</li>" for n in notes)
    return f"""<header><h1>{e(title)}</h1><dl class="meta">{meta_html}</dl></header>
<main>
<div>
<section id="sequence"><h2>Sequence</h2><div class="legend">{legend}</div>
<p class="hint">Hover over a token to see what every layer would output there; click to pin it; ← / → move along.
The underlined token is the decision position: its logits choose the level.</p>
<div id="tokens"></div></section>
{f'<section id="notes"><h2>Notes</h2><ul class="notes">{notes_html}</ul></section>' if notes else ''}
{f'<section id="pictures" class="pictures"><h2>Input</h2>{picture_html}</section>' if pictures else ''}
</div>
<section id="lens"><h2>{e(lens_title)} top-k per layer</h2><div id="lens-title"></div>
<table id="topk-table" hidden></table></section>
</main>
<div class="wide">
{f'<section id="figures"><h2>Figures</h2><p class="hint">Click a figure to see it at full size.</p>'
  f'<div class="figures">{figure_html}</div></section>' if figures else ''}
</div>"""


def figures_html(figures: Sequence[tuple[str, str, str]]) -> str:
    """``<figure>`` elements of ``(name, caption, base64 PNG)``, shown at their own size up to the page width."""
    e = html.escape
    return "".join(f'<figure id="figure-{e(name)}" data-figure="{e(name)}"><img alt="{e(name)}" '
                   f'src="data:image/png;base64,{b64}"><figcaption>{e(caption)}</figcaption></figure>'
                   for name, caption, b64 in figures)


def _level_words(trace: "Trace") -> str:
    read = reading(trace)
    if read.layout is None or not read.decided:
        return read.words
    level = read.layout.level
    return (f"{level!r}, decided at the {read.words}" if level else
            f"read at the {read.words} (prefilled answer; the level is the most probable level word there)")
