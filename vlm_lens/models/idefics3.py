"""Idefics3 and SmolVLM adapters: images split into tiles with row/column markers, plus a global view.

The module tree both rely on (transformers v5)::

    Idefics3ForConditionalGeneration / SmolVLMForConditionalGeneration
    ├── model
    │   ├── vision_model            SigLIP-style encoder over each tile (and the global view)
    │   ├── connector               pixel shuffle (scale_factor^2 patches -> 1 token) + Linear
    │   └── text_model              LlamaModel (``layers``, ``norm``, ``embed_tokens``)
    └── lm_head

Image tokens. The processor resizes an image (longest edge ``size``), splits it into ``rows x cols`` tiles of
``max_image_size`` pixels, and writes, per tile, ``<fake_token_around_image><row_r_col_c>`` followed by
``image_seq_len`` ``<image>`` ids (a ``side x side`` grid, ``side = image_size / patch / scale_factor``), a
newline after each row of tiles, then ``<fake_token_around_image><global-img>`` + ``image_seq_len`` ``<image>``
ids for the whole image downscaled to one tile, and a closing ``<fake_token_around_image>``. An image too small to
split gets the global view only.

An image's span runs from its first to its last ``<image>`` id, so the tile markers inside it are positions of
the span labelled "system" (they are text tokens). Its layout starts with the ``base`` block of the global view
(the whole image, last in the sequence: ``layout[0]`` is what ``grid`` and patch maps describe), then one
``side x side`` block per tile in sequence order, named ``crop_<r>_<c>`` after the marker in front of it (1-based,
as in the tokens). The layout is read from the markers in the token ids, which is exactly what the processor
wrote.

SmolVLM is the same layout; its processor also holds a video processor (torchvision), which vlm_lens leaves out.

Example:
    >>> import vlm_lens as vl                                                   # doctest: +SKIP
    >>> m = vl.load("checkpoints/SmolVLM-256M-Instruct")                        # doctest: +SKIP
    >>> [b.name for b in vl.trace(m, "photo.jpg", "Rate it.").spans["image"].layout]  # doctest: +SKIP
    ['base', 'crop_1_1', 'crop_1_2', ...]
"""

from __future__ import annotations

import re
from typing import Any

from PIL import Image
from torch import nn
from transformers import SmolVLMProcessor
from transformers.processing_utils import ProcessorMixin

from ..core.errors import UnsupportedModelError
from ..core.spans import GridBlock, Span
from .base import Adapter, runs_of

__all__ = ["Idefics3Adapter", "SmolVLMImageTextProcessor"]

_MARKER = re.compile(r"<row_(\d+)_col_(\d+)>")


class SmolVLMImageTextProcessor(SmolVLMProcessor):
    """``SmolVLMProcessor`` from an image processor and a tokenizer, without the video processor (which needs
    torchvision). Saved under the original class name."""

    def __init__(self, image_processor=None, tokenizer=None, image_seq_len: int = 169, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, image_seq_len=image_seq_len, chat_template=chat_template,
                         **kwargs)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        # SmolVLMProcessor's override reads the video processor's frame settings; images need none of it.
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)


SmolVLMImageTextProcessor.__name__ = SmolVLMImageTextProcessor.__qualname__ = "SmolVLMProcessor"


class Idefics3Adapter(Adapter):
    """Idefics3 / SmolVLM (``model_type`` ``"idefics3"``, ``"smolvlm"``)."""

    family = "idefics3"
    model_types = ("idefics3", "smolvlm")

    @classmethod
    def load_processor(cls, source: str, model: nn.Module, *, trust_remote_code: bool) -> Any:
        if model.config.model_type == "smolvlm":
            return SmolVLMImageTextProcessor.from_pretrained(source, backend="pil")
        return super().load_processor(source, model, trust_remote_code=trust_remote_code)

    def check_config(self, config: Any) -> None:
        vision = config.vision_config
        scale = config.scale_factor
        if not isinstance(scale, int) or (vision.image_size // vision.patch_size) % scale:
            side = vision.image_size // vision.patch_size
            raise UnsupportedModelError(f"scale_factor={scale!r} does not divide the {side} patches per side; the "
                                        "pixel shuffle would not give a square token grid.")

    @property
    def language_model(self) -> nn.Module:
        return self.model.model.text_model

    @property
    def _side(self) -> int:
        vision = self.model.config.vision_config
        return vision.image_size // vision.patch_size // self.model.config.scale_factor

    def processor_images(self, images: list[list[Image.Image]]) -> Any:
        """Nested per prompt (SmolVLM's processor does not split a flat list by prompt)."""
        return [list(sample) for sample in images] if any(images) else None

    def image_spans(self, ids: list[int], model_inputs: dict[str, Any], sample: int,
                    images: list[list[Image.Image]]) -> list[Span]:
        """One span per image, from its first tile to its global view; layout: the global view, then the tiles
        (named after their ``<row_r_col_c>`` markers)."""
        tokenizer = self.tokenizer
        global_id = tokenizer.convert_tokens_to_ids("<global-img>")
        side = self._side
        spans, blocks, start = [], [], None
        for a, b in runs_of(ids, self.image_token_id):
            if b - a != side * side or a == 0:
                raise UnsupportedModelError(f"a run of {b - a} image tokens at position {a}; every tile of this "
                                            f"model holds {side * side} ({side} x {side}) after a marker token.")
            marker = ids[a - 1]
            start = a if start is None else start
            if marker == global_id:  # the whole image ends it; it leads the layout, as the grid it describes
                base = GridBlock("base", a - start, side, side)
                spans.append(Span(start, b, len(spans), (side, side), (base, *blocks)))
                blocks, start = [], None
                continue
            found = _MARKER.fullmatch(tokenizer.convert_ids_to_tokens(marker) or "")
            if found is None:
                raise UnsupportedModelError(f"the image tokens at position {a} follow {marker!r}, neither "
                                            "<global-img> nor a <row_r_col_c> marker.")
            blocks.append(GridBlock(f"crop_{found[1]}_{found[2]}", a - start, side, side))
        if start is not None or len(spans) != len(images[sample]):
            raise UnsupportedModelError(f"{len(spans)} complete image(s) (tiles + global view) in the tokens of "
                                        f"sample {sample}, for {len(images[sample])} image(s) given.")
        return spans
