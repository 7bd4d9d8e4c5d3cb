"""Plain types that name parts of a traced sequence: segments, spans of positions, and patch-grid blocks.

Every layer of vlm_lens speaks of positions the same way: a position is a *decoder position* (index ``t`` is the
``t``-th vector entering decoder layer 0; an image that becomes 576 embeddings occupies 576 positions), a
:class:`Span` is a half-open range of them, and each position carries one label of :data:`SEGMENTS`. These types
hold numbers only: no tensors, no model, nothing that imports torch.

Example:
    >>> from vlm_lens.core.spans import Span
    >>> span = Span(3, 19, image_index=0, grid=(4, 4))
    >>> len(span), span.slice
    (16, slice(3, 19, None))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["SEGMENTS", "GridBlock", "Span"]

#: Segment labels of decoder positions, in the vocabulary used by ``Trace.tokens``.
SEGMENTS = ("system", "image", "instruction", "response")


@dataclass(frozen=True)
class GridBlock:
    """A rectangular block of image tokens laid out row-major.

    Attributes:
        name: ``"base"`` for the whole image at the encoder's resolution, ``"crops"`` for the high-resolution tiles
            of anyres families stitched into one grid, ``"crop_<r>_<c>"`` for a tile kept apart (Idefics3),
            ``"newline"`` for a lone newline token (``rows=1, cols=0, newline=True``: LLaVA-OneVision's multi-image).
        offset: Index of the block's first token inside its image span.
        rows: Number of token rows.
        cols: Number of image tokens per row (not counting a newline token).
        newline: Whether each row is followed by one extra "newline" token (LLaVA-NeXT's ``image_newline``).
    """

    name: str
    offset: int
    rows: int
    cols: int
    newline: bool = False

    @property
    def length(self) -> int:
        return self.rows * (self.cols + int(self.newline))


@dataclass(frozen=True)
class Span:
    """The decoder positions ``[start, stop)`` of one part of a sequence (an image, the instruction, the response).

    Attributes:
        start: First position.
        stop: One past the last position.
        image_index: For image spans, which image of the prompt (0-based) the span holds; None otherwise.
        grid: ``(rows, cols)`` of the base patch grid when the image tokens (or their first block) are spatial.
        layout: The blocks an image span is made of, in sequence order except that the block of the whole image
            comes first (``layout[0]``, the grid patch maps use; Idefics3 places it after its tiles); empty when
            the tokens are not spatial (e.g. the learned queries of a Q-Former or abstractor) and for text spans.
    """

    start: int
    stop: int
    image_index: int | None = None
    grid: tuple[int, int] | None = None
    layout: tuple[GridBlock, ...] = ()

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)

    def __len__(self) -> int:
        return self.stop - self.start

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "stop": self.stop, "image_index": self.image_index,
                "grid": list(self.grid) if self.grid else None,
                "layout": [vars(block) for block in self.layout]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Span":
        grid = tuple(data["grid"]) if data.get("grid") else None
        layout = tuple(GridBlock(**block) for block in data.get("layout", ()))
        return cls(data["start"], data["stop"], data.get("image_index"), grid, layout)
