"""LLaVA-OneVision adapter: anyres crops for a single image, one base grid per image when there are several.

The module tree it relies on (transformers v5)::

    LlavaOnevisionForConditionalGeneration
    ├── model
    │   ├── vision_tower            SigLIP vision encoder (no CLS embedding)
    │   ├── multi_modal_projector   Linear-GELU-Linear
    │   ├── image_newline           one learned vector, appended after each row of the crops
    │   └── language_model          Qwen2Model (``layers``, ``norm``, ``embed_tokens``)
    └── lm_head

Image tokens (``LlavaOnevisionModel.pack_image_features``). The processor writes one ``<image>`` id per embedding:

- **one image in the prompt**: the base view (``side x side`` patches, ``side = image_size / patch``), then the
  high-resolution crops stitched into one grid, unpadded to the image's aspect ratio, shrunk (bilinear) when it
  holds more than ``anyres_max_N``'s ``N`` crops' worth of patches by over 10 %, each row followed by the
  ``image_newline`` token;
- **several images in the prompt**: per image the base view only, followed by one newline token.

Layouts are recomputed here with the model's own anyres helpers; the tests compare them with the number of
embeddings the model produces.

Video (``<video>``: frames pooled 2x2 plus one newline) cannot be fed: transformers' video processors need
torchvision and ``vl.trace`` takes images (see docs/families.md).

Example:
    >>> import vlm_lens as vl                                                      # doctest: +SKIP
    >>> m = vl.load("checkpoints/llava-onevision-qwen2-0.5b-ov-hf")                # doctest: +SKIP
    >>> [b.name for b in vl.trace(m, "photo.jpg", "Rate it.").spans["image"].layout]  # doctest: +SKIP
    ['base', 'crops']
"""

from __future__ import annotations

import math
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import LlavaOnevisionProcessor

from ..core.errors import UnsupportedModelError
from ..core.spans import GridBlock, Span
from .base import split_runs
from .llava import LlavaAdapter

__all__ = ["LlavaOnevisionAdapter", "LlavaOnevisionImageTextProcessor"]


class LlavaOnevisionImageTextProcessor(LlavaOnevisionProcessor):
    """``LlavaOnevisionProcessor`` from an image processor and a tokenizer, without the video processor (which
    needs torchvision). Saved under the original class name."""

    def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None,
                 vision_feature_select_strategy=None, chat_template=None, image_token="<image>",
                 video_token="<video>", vision_aspect_ratio="anyres_max_9", **kwargs):
        super().__init__(image_processor, tokenizer, None, num_image_tokens=num_image_tokens,
                         vision_feature_select_strategy=vision_feature_select_strategy, chat_template=chat_template,
                         image_token=image_token, video_token=video_token, vision_aspect_ratio=vision_aspect_ratio,
                         **kwargs)


LlavaOnevisionImageTextProcessor.__name__ = LlavaOnevisionImageTextProcessor.__qualname__ = "LlavaOnevisionProcessor"


class LlavaOnevisionAdapter(LlavaAdapter):
    """LLaVA-OneVision (``model_type="llava_onevision"``)."""

    family = "llava_onevision"
    model_types = ("llava_onevision",)

    @classmethod
    def load_processor(cls, source: str, model: nn.Module, *, trust_remote_code: bool) -> Any:
        return LlavaOnevisionImageTextProcessor.from_pretrained(source, backend="pil")

    def check_config(self, config: Any) -> None:
        if config.vision_feature_select_strategy != "full":
            raise UnsupportedModelError(
                f"vision_feature_select_strategy={config.vision_feature_select_strategy!r}: LLaVA-OneVision's base "
                "grid is only a full grid with 'full' (SigLIP has no CLS embedding to drop); the adapter refuses "
                "other strategies.")
        ratio = config.vision_aspect_ratio
        if not (isinstance(ratio, str) and ratio.startswith("anyres_max_") and ratio[11:].isdigit()):
            raise UnsupportedModelError(f"vision_aspect_ratio={ratio!r}: the adapter knows 'anyres_max_<N>' only.")

    @property
    def placeholder_ids(self) -> list[int]:
        return [self.image_token_id, int(self.model.config.video_token_id)]

    def processor_images(self, images: list[list[Image.Image]]) -> Any:
        """Nested per prompt: the processor crops an image only when it is alone in its prompt."""
        nested = [sample for sample in images if sample]
        return nested or None

    def image_spans(self, ids: list[int], model_inputs: dict[str, Any], sample: int,
                    images: list[list[Image.Image]]) -> list[Span]:
        first = sum(len(s) for s in images[:sample])
        alone = len(images[sample]) == 1
        layouts = [self.image_layout(model_inputs, first + k, alone=alone) for k in range(len(images[sample]))]
        counts = [sum(block.length for block in layout) for layout in layouts]
        runs = split_runs(ids, self.image_token_id, counts)
        return [Span(start, stop, k, (layout[0].rows, layout[0].cols), layout)
                for k, ((start, stop), layout) in enumerate(zip(runs, layouts))]

    def image_layout(self, model_inputs: dict[str, Any], image: int, *, alone: bool = True) -> tuple[GridBlock, ...]:
        """Base grid, then either the unpadded (and possibly shrunk) crops with row newlines for an image ``alone``
        in its prompt, or a single newline token (a block of one row, no columns) for an image sharing it."""
        from transformers.models.llava_onevision.modeling_llava_onevision import (
            get_anyres_image_grid_shape,
            unpad_image,
        )

        config = self.model.config
        side = config.vision_config.image_size // self._patch
        base = GridBlock("base", 0, side, side)
        if not alone:
            return base, GridBlock("newline", base.length, 1, 0, newline=True)
        size = model_inputs["image_sizes"][image].tolist()
        grid_h, grid_w = get_anyres_image_grid_shape(size, config.image_grid_pinpoints, config.vision_config.image_size)
        rows, cols = unpad_image(torch.empty(0, grid_h * side, grid_w * side), size).shape[1:]
        ratio = math.sqrt(rows * cols / (int(config.vision_aspect_ratio[len("anyres_max_"):]) * side**2))
        if ratio > 1.1:
            rows, cols = int(rows // ratio), int(cols // ratio)
        return base, GridBlock("crops", base.length, int(rows), int(cols), newline=True)
