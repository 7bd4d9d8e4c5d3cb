"""Qwen2-VL and Qwen2.5-VL adapters: dynamic resolution, 2x2 patch merging, M-RoPE.

The module tree both rely on (transformers v5)::

    Qwen2VLForConditionalGeneration / Qwen2_5_VLForConditionalGeneration
    ├── model
    │   ├── visual                  ViT over 14 px patches (+ window attention in 2.5), then PatchMerger (2x2 -> 1)
    │   └── language_model          Qwen2VLTextModel: ``embed_tokens``, ``layers[i].self_attn``, ``norm``,
    │                               ``rotary_emb`` (M-RoPE: 3-D positions t/h/w over sections of the head dim)
    └── lm_head

Image tokens. The processor resizes each image to multiples of ``patch * merge`` (28 px), keeping its aspect
ratio within ``[min_pixels, max_pixels]``, and writes ``<|vision_start|>`` + ``(H/28)(W/28)`` ``<|image_pad|>`` +
``<|vision_end|>``. ``image_grid_thw`` holds ``(1, H/14, W/14)`` per image; the merged tokens are row-major over
the ``(H/28, W/28)`` grid, which is the span's grid.

Positions. Qwen2-VL numbers decoder positions in three dimensions (temporal, row, column) computed by the model
from ``input_ids``, ``image_grid_thw`` and the attention mask (``get_rope_index``): text after an image continues
from ``max(grid) + 1``, not from its sequence index. ``cumsum(mask) - 1`` — right for every other family — is
wrong here, so the traced forward lets the model compute its own positions, from the same mask ``generate`` used,
which also makes left-padded samples equal to unpadded ones. Attention rows need no Qwen-specific code: the
attention function receives queries and keys after M-RoPE (``tests/models/test_qwen2_vl.py`` proves rows ==
eager weights).

Video. ``<|video_pad|>`` tokens are labelled as image positions if they appear, but vlm_lens cannot feed videos:
transformers' video processors need torchvision, and ``vl.trace`` takes images. See docs/families.md.

Example:
    >>> import vlm_lens as vl                                                   # doctest: +SKIP
    >>> m = vl.load("checkpoints/Qwen2-VL-2B-Instruct")                         # doctest: +SKIP
    >>> vl.trace(m, "photo.jpg", "Rate the quality.").spans["image"].grid        # (H/28, W/28)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

from ..core.errors import UnsupportedModelError
from ..core.spans import GridBlock, Span
from .base import Adapter, Prompt, split_runs

__all__ = ["Qwen2VLAdapter", "Qwen2VLImageTextProcessor", "Qwen2_5_VLImageTextProcessor"]


class Qwen2VLImageTextProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` from an image processor and a tokenizer, without the video processor (which needs
    torchvision). Saved under the original class name, so checkpoints load with ``AutoProcessor`` elsewhere."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen2_5_VLImageTextProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without the video processor; see :class:`Qwen2VLImageTextProcessor`."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


for _cls in (Qwen2VLImageTextProcessor, Qwen2_5_VLImageTextProcessor):
    _cls.__name__ = _cls.__qualname__ = _cls.__mro__[1].__name__  # processor_config.json names the original

_PROCESSORS = {"qwen2_vl": Qwen2VLImageTextProcessor, "qwen2_5_vl": Qwen2_5_VLImageTextProcessor}


class Qwen2VLAdapter(Adapter):
    """Qwen2-VL / Qwen2.5-VL (``model_type`` ``"qwen2_vl"``, ``"qwen2_5_vl"``)."""

    family = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")

    @classmethod
    def load_processor(cls, source: str, model: nn.Module, *, trust_remote_code: bool) -> Any:
        return _PROCESSORS[model.config.model_type].from_pretrained(source, backend="pil")

    def check_config(self, config: Any) -> None:
        merge = getattr(config.vision_config, "spatial_merge_size", None)
        if not isinstance(merge, int) or merge < 1:
            raise UnsupportedModelError(f"vision_config.spatial_merge_size={merge!r}: the {self.family} adapter "
                                        "expects a positive integer (2 in every released checkpoint).")
        rope = getattr(config.get_text_config(), "rope_parameters", None) or {}
        if rope.get("rope_type", "default") not in ("default", "mrope"):
            raise UnsupportedModelError(f"rope_type={rope.get('rope_type')!r}: the {self.family} adapter knows "
                                        "Qwen2-VL's multimodal RoPE only ('default'/'mrope').")

    @property
    def placeholder_ids(self) -> list[int]:
        return [self.image_token_id, int(self.model.config.video_token_id)]

    # -------------------------------------------------------------------------------------------------- inputs
    @property
    def image_placeholder(self) -> str:
        """``<|vision_start|><|image_pad|><|vision_end|>``: what the chat template writes per image, so that an image
        placed in the prompt by the user gets its markers too."""
        return "<|vision_start|>" + super().image_placeholder + "<|vision_end|>"

    def label_segments(self, prompt: Prompt, ids: list[int]) -> list[str]:
        labels = super().label_segments(prompt, ids)
        video = int(self.model.config.video_token_id)
        return ["image" if t == video else label for t, label in zip(ids, labels)]

    def image_spans(self, ids: list[int], model_inputs: dict[str, Any], sample: int,
                    images: list[list[Image.Image]]) -> list[Span]:
        """One span per image, with its merged-token grid ``(H / (patch * merge), W / (patch * merge))``."""
        first = sum(len(s) for s in images[:sample])
        merge = int(self.model.config.vision_config.spatial_merge_size)
        grids = [model_inputs["image_grid_thw"][first + k].tolist() for k in range(len(images[sample]))]
        blocks = [GridBlock("base", 0, h // merge, w // merge) for _, h, w in grids]
        counts = [t * block.length for (t, _, _), block in zip(grids, blocks)]
        return [Span(start, stop, k, (block.rows, block.cols), (block,))
                for k, ((start, stop), block) in enumerate(zip(split_runs(ids, self.image_token_id, counts), blocks))]

    # --------------------------------------------------------------------------------------- forward arguments
    def forward_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       model_inputs: dict[str, Any]) -> dict[str, Any]:
        """Rebuild ``mm_token_type_ids`` for prompt + response, and let the model compute its 3-D positions.

        With an image in the batch, the model's ``get_rope_index`` numbers positions from the attention mask, so
        padding is skipped exactly as in ``generate``. Without one it would count padding, so text-only batches get
        ``cumsum(mask) - 1`` (the same on all three axes) as every other family.
        """
        config = self.model.config
        types = torch.zeros_like(input_ids, dtype=torch.int)
        types[input_ids == config.image_token_id] = 1
        types[input_ids == config.video_token_id] = 2
        inputs = {**model_inputs, "input_ids": input_ids, "attention_mask": attention_mask,
                  "mm_token_type_ids": types}
        if model_inputs.get("image_grid_thw") is None and model_inputs.get("video_grid_thw") is None:
            inputs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return inputs
