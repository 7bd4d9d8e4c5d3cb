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

from ..core.errors import UnsupportedModelError
from ..core.spans import GridBlock, Span
from .base import Adapter, split_runs

__all__ = ["CHAT_TEMPLATE", "LlavaAdapter", "LlavaNextAdapter"]

#: LLaVA-1.5's conversation format: ``USER: <image>\\n{prompt} ASSISTANT:``.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


class LlavaAdapter(Adapter):
    """LLaVA-1.5 (``model_type="llava"``): a fixed patch grid per image."""

    family = "llava"
    model_types = ("llava",)

    def check_config(self, config: Any) -> None:
        strategy = config.vision_feature_select_strategy
        if strategy not in ("default", "full"):
            raise UnsupportedModelError(f"vision_feature_select_strategy={strategy!r} is not one the {self.family} "
                                        "adapter understands ('default' or 'full').")

    def image_spans(self, ids: list[int], model_inputs: dict[str, Any], sample: int,
                    images: list[list[Image.Image]]) -> list[Span]:
        first = sum(len(s) for s in images[:sample])
        layouts = [self.image_layout(model_inputs, first + k) for k in range(len(images[sample]))]
        counts = [max(block.offset + block.length for block in layout) for layout in layouts]
        return [Span(start, stop, k, (layout[0].rows, layout[0].cols), layout)
                for k, ((start, stop), layout) in enumerate(zip(split_runs(ids, self.image_token_id, counts), layouts))]

    def image_layout(self, model_inputs: dict[str, Any], image: int) -> tuple[GridBlock, ...]:
        """The token blocks of image number ``image`` of the batch: one ``rows x cols`` patch grid, after the CLS
        embedding when the select strategy keeps it."""
        height, width = model_inputs["pixel_values"][image].shape[-2:]
        with_cls = self.model.config.vision_feature_select_strategy == "full"
        return (GridBlock("base", int(with_cls), height // self._patch, width // self._patch),)

    @property
    def _patch(self) -> int:
        return int(self.model.config.vision_config.patch_size)


class LlavaNextAdapter(LlavaAdapter):
    """LLaVA-NeXT (``model_type="llava_next"``): base grid + unpadded high-resolution crops with row newlines."""

    family = "llava_next"
    model_types = ("llava_next",)

    def check_config(self, config: Any) -> None:
        if config.vision_feature_select_strategy != "default":
            raise UnsupportedModelError(
                f"vision_feature_select_strategy={config.vision_feature_select_strategy!r}: LLaVA-NeXT's anyres "
                "packing only lines up with 'default' (CLS dropped); the adapter refuses other strategies.")

    def image_layout(self, model_inputs: dict[str, Any], image: int) -> tuple[GridBlock, ...]:
        """Base grid, then the crops stitched into one grid, unpadded to the image's aspect ratio, with a newline
        token after each row (the layout of LLaVA-NeXT's ``pack_image_features``)."""
        from transformers.models.llava_next.modeling_llava_next import (
            get_anyres_image_grid_shape,
            unpad_image,
        )

        config = self.model.config
        side = config.vision_config.image_size // self._patch
        size = model_inputs["image_sizes"][image].tolist()
        base = GridBlock("base", 0, side, side)
        # The processor always makes the base view plus >= 1 crop; the model stitches the crops into one
        # (grid_h * side) x (grid_w * side) grid and crops away the letterbox padding.
        grid_h, grid_w = get_anyres_image_grid_shape(size, config.image_grid_pinpoints, config.vision_config.image_size)
        rows, cols = unpad_image(torch.empty(0, grid_h * side, grid_w * side), size).shape[1:]
        return base, GridBlock("crops", base.length, int(rows), int(cols), newline=True)
