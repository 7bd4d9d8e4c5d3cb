"""LLaVA-1.5 and LLaVA-NeXT (anyres) adapters.

The module tree both rely on (transformers v5)::

    LlavaForConditionalGeneration / LlavaNextForConditionalGeneration
    ├── model
    │   ├── vision_tower            CLIP (or SigLIP) vision encoder
    │   ├── multi_modal_projector   Linear-GELU-Linear
    │   ├── image_newline           (NeXT only) one learned vector appended to each row of the crops
    │   └── language_model          LlamaModel / MistralModel / ... (``layers``, ``norm``, ``embed_tokens``)
    └── lm_head                     Linear(d_model -> vocab)

Image tokens. The processor expands ``<image>`` into one ``image_token_id`` per image embedding:

- LLaVA-1.5: ``(H / patch) x (W / patch)`` patch embeddings of the CLIP grid, row-major (24 x 24 = 576 for
  336 px / patch 14), with the CLS embedding dropped (``vision_feature_select_strategy="default"``) or kept in
  front (``"full"``).
- LLaVA-NeXT: the base image (a ``g x g`` grid) followed by the high-resolution crops stitched into one grid,
  unpadded to the image's aspect ratio, each row followed by the ``image_newline`` token. The number of tokens
  depends on the image size; the layout is recomputed here with the model's own anyres helpers.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from ..errors import UnsupportedModelError
from .base import Adapter, GridBlock, Span, runs_of

__all__ = ["LlavaAdapter", "LlavaNextAdapter"]


class LlavaAdapter(Adapter):
    """LLaVA-1.5 (``model_type="llava"``): a fixed patch grid per image."""

    family = "llava"
    model_types = ("llava",)

    def check_config(self, config: Any) -> None:
        strategy = config.vision_feature_select_strategy
        if strategy not in ("default", "full"):
            raise UnsupportedModelError(f"vision_feature_select_strategy={strategy!r} is not one the {self.family} "
                                        "adapter understands ('default' or 'full').")

    @property
    def _patch(self) -> int:
        return int(self.model.config.vision_config.patch_size)

    def image_spans(self, ids: list[int], model_inputs: dict[str, Any], sample: int,
                    images: list[list[Image.Image]]) -> list[Span]:
        first = sum(len(s) for s in images[:sample])
        pixel_values = model_inputs["pixel_values"]
        with_cls = self.model.config.vision_feature_select_strategy == "full"
        spans = []
        for k, (start, stop) in enumerate(runs_of(ids, self.image_token_id)):
            height, width = pixel_values[first + k].shape[-2:]
            rows, cols = height // self._patch, width // self._patch
            offset = int(with_cls)
            if stop - start != rows * cols + offset:
                raise UnsupportedModelError(f"image {k} has {stop - start} tokens, expected {rows}x{cols}"
                                            f"{' + CLS' if with_cls else ''}; the processor and the model "
                                            "disagree about the patch grid.")
            spans.append(Span(start, stop, k, (rows, cols), (GridBlock("base", offset, rows, cols),)))
        return spans


class LlavaNextAdapter(LlavaAdapter):
    """LLaVA-NeXT (``model_type="llava_next"``): base grid + unpadded high-resolution crops with row newlines."""

    family = "llava_next"
    model_types = ("llava_next",)

    def check_config(self, config: Any) -> None:
        if config.vision_feature_select_strategy != "default":
            raise UnsupportedModelError(
                f"vision_feature_select_strategy={config.vision_feature_select_strategy!r}: LLaVA-NeXT's anyres "
                "packing only lines up with 'default' (CLS dropped); the adapter refuses other strategies.")

    def image_spans(self, ids: list[int], model_inputs: dict[str, Any], sample: int,
                    images: list[list[Image.Image]]) -> list[Span]:
        from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

        config = self.model.config
        first = sum(len(s) for s in images[:sample])
        side = config.vision_config.image_size // self._patch
        spans = []
        for k, (start, stop) in enumerate(runs_of(ids, self.image_token_id)):
            size = model_inputs["image_sizes"][first + k].tolist()
            base = GridBlock("base", 0, side, side)
            # The processor always makes the base view plus >= 1 crop; the model stitches the crops into one
            # (grid_h * side) x (grid_w * side) grid and crops away the letterbox padding.
            grid_h, grid_w = get_anyres_image_grid_shape(size, config.image_grid_pinpoints,
                                                         config.vision_config.image_size)
            rows, cols = unpad_image(torch.empty(0, grid_h * side, grid_w * side), size).shape[1:]
            layout = (base, GridBlock("crops", base.length, int(rows), int(cols), newline=True))
            expected = sum(block.length for block in layout)
            if stop - start != expected:
                raise UnsupportedModelError(f"image {k} has {stop - start} tokens, the anyres layout gives "
                                            f"{expected}; the processor and the model disagree.")
            spans.append(Span(start, stop, k, (side, side), layout))
        return spans

