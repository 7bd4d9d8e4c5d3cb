"""Shared look of every vlm_lens figure: segment colours, readable token labels, figure creation and saving.

Figures are built on :class:`matplotlib.figure.Figure` objects directly, never through ``pyplot``: no global
backend switch, no figure registry that grows in long notebooks, nothing changed at import. Styling is applied with
``matplotlib.rc_context`` around the drawing only, so a user's own rcParams are left as they were.

Example:
    >>> from vlm_lens.plot.style import token_label
    >>> token_label("\\n"), token_label(" "), token_label("incomprehensibility", limit=8)
    ('⏎', '␣', 'incompr…')
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Iterator

import numpy as np

from ..core.errors import VlmLensError

__all__ = ["ATTENTION_CMAP", "ATTENTION_SCALE", "SEGMENT_COLORS", "attention_label", "integer_ticks", "new_figure",
           "overlay_cmap", "save", "style", "token_label"]

#: One colour per segment (Okabe-Ito, readable by colour-blind readers and in greyscale print); ``description`` and
#: ``answer`` are the two parts of a response that :mod:`vlm_lens.biqa.answer` tells apart in IQA runs.
SEGMENT_COLORS = {"system": "#999999", "image": "#E69F00", "instruction": "#0072B2", "response": "#009E73",
                  "description": "#CC79A7", "answer": "#56B4E9"}

#: Colour of the model's final output token wherever it is highlighted.
HIGHLIGHT = "#D55E00"

#: One colour convention for attention in every figure, heatmap or overlay: light = little attention, dark = much
#: (magma reversed, readable in greyscale), on a square-root scale by default, so that an attention sink does not
#: flatten everything else. Overlays on a picture use the same map with low values transparent (:func:`overlay_cmap`).
ATTENTION_CMAP = "magma_r"
ATTENTION_SCALE = "sqrt"
_SCALE_WORDS = {"linear": "linear scale", "sqrt": "sqrt scale", "log": "log scale"}

#: Formats :func:`save` writes, by file suffix.
FORMATS = (".png", ".svg", ".pdf")

_STYLE = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "none",   # SVG text stays text (searchable, editable in Inkscape / Illustrator)
    "pdf.fonttype": 42,       # TrueType in PDFs: journals reject Type 3 fonts
}

_READABLE = {"\n": "⏎", "\r": "↵", "\t": "⇥", " ": "␣", "": "∅"}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The rcParams vlm_lens figures are drawn with, for the duration of the block only."""
    import matplotlib

    with matplotlib.rc_context(_STYLE):
        yield


def new_figure(width: float, height: float):
    """A pyplot-free Figure with constrained layout, ``width x height`` inches (clamped to a printable range)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(min(max(width, 3.0), 30.0), min(max(height, 2.0), 24.0)), layout="constrained")


def save(fig, path: str | Path, *, dpi: int = 200) -> Path:
    """Write ``fig`` to ``path``; the suffix picks the format (``.png``, ``.svg`` or ``.pdf``).

    Args:
        fig: A matplotlib Figure (every vlm_lens figure function returns one).
        path: Output file; its folder is created.
        dpi: Resolution of PNG output.

    Returns:
        The path written.

    Example:
        >>> from matplotlib.figure import Figure
        >>> import tempfile, pathlib
        >>> save(Figure(), pathlib.Path(tempfile.mkdtemp()) / "empty.svg").suffix
        '.svg'
    """
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise VlmLensError(f"path={str(path)!r}: the suffix picks the format; expected one of "
                           f"{', '.join(FORMATS)}, got {path.suffix or 'no suffix'!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    with style():
        fig.savefig(path, dpi=dpi, facecolor="white", metadata=_metadata(path.suffix.lower()))
    return path


def _metadata(suffix: str) -> dict:
    # No creation date: the same figure saved twice gives the same bytes (reviewable diffs, cacheable builds).
    return {".png": {"Software": "vlm_lens"}, ".svg": {"Date": None, "Creator": "vlm_lens"},
            ".pdf": {"CreationDate": None, "Creator": "vlm_lens"}}[suffix]


def attention_label(scale: str, what: str = "attention") -> str:
    """The colour-bar label of an attention scale: ``"attention (sqrt scale)"``."""
    return f"{what} ({_SCALE_WORDS.get(scale, scale + ' scale')})"


def overlay_cmap(cmap: str = ATTENTION_CMAP, opacity: float = 0.75):
    """``cmap`` with an opacity ramp: transparent at the bottom of the scale, ``opacity`` at the top, so the picture
    under an overlay stays visible where attention is low and is marked where it is high."""
    import matplotlib
    from matplotlib.colors import ListedColormap

    colours = matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))
    colours[:, 3] = opacity * np.linspace(0.0, 1.0, 256) ** 1.5
    return ListedColormap(colours, name=f"{cmap}_overlay")


def integer_ticks(ax, axis: str = "x") -> None:
    """Only whole numbers as ticks on ``axis`` (layers are never 1.5)."""
    from matplotlib.ticker import MaxNLocator

    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True))


def token_label(text: str, limit: int = 12) -> str:
    """A token's text as it should appear on an axis: whitespace made visible, glyphs the font lacks written as
    ``U+XXXX``, and long texts elided with ``…`` to at most ``limit`` characters."""
    text = str(text)
    if text in _READABLE:
        return _READABLE[text]
    if not text.strip():
        return "".join(_READABLE.get(ch, "␣") for ch in text)[:limit]
    text = text.strip().replace("\n", "⏎").replace("\t", "⇥").replace("\r", "↵")
    known = _charmap()
    text = "".join(ch if ord(ch) in known else f"U+{ord(ch):04X}" for ch in text)
    return text if len(text) <= limit else text[: max(limit - 1, 1)] + "…"


@functools.lru_cache(maxsize=1)
def _charmap() -> frozenset[int]:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"))
    return frozenset(FT2Font(path).get_charmap())


def thin_ticks(n: int, most: int) -> list[int]:
    """At most ``most`` evenly spaced indices of ``range(n)``, always including the first and the last."""
    if n <= most:
        return list(range(n))
    step = -(-n // most)
    picked = list(range(0, n, step))
    if picked[-1] != n - 1:
        picked[-1] = n - 1
    return picked
