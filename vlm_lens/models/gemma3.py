"""Gemma 3 adapter: sliding-window layers, bidirectional image blocks, scaled embeddings, ``(1 + w)`` norms.

The module tree it relies on (transformers v5)::

    Gemma3ForConditionalGeneration
    ├── model
    │   ├── vision_tower            SigLIP vision encoder
    │   ├── multi_modal_projector   RMSNorm + projection of the patches, average-pooled to ``mm_tokens_per_image``
    │   └── language_model          Gemma3TextModel: ``embed_tokens`` (scaled by sqrt(d_model) inside the embedding
    │                               module), ``layers[i].self_attn`` (q/k RMSNorms, ``query_pre_attn_scalar``
    │                               scaling, a sliding window on ``sliding_attention`` layers), ``norm`` (``1 + w``)
    └── lm_head

Image tokens. The user's placeholder is ``<start_of_image>``; the processor expands it to ``"\\n\\n"``,
``<start_of_image>``, ``mm_tokens_per_image`` ``<image_soft_token>`` ids (a ``side x side`` grid of pooled patches,
row-major, ``side = sqrt(mm_tokens_per_image)``), ``<end_of_image>``, ``"\\n\\n"``. The span is the soft tokens.
Pan-and-scan crops (``do_pan_and_scan``, off by default and not reachable through ``vl.trace``) are refused.

Masking. ``token_type_ids`` (1 on soft tokens) make each image block attend to itself in both directions, in full
and sliding layers alike; the traced forward rebuilds them for prompt + answer. Rows need nothing else: the
attention function receives the model's masks per layer type, the ``sliding_window`` and the ``scaling``.

Logits. ``Gemma3ForConditionalGeneration`` applies no final soft-capping (transformers 5.x), whatever
``final_logit_softcapping`` says, so the lens is ``lm_head(norm(h))``, exactly as the model's logits (tested with
the field set). Embedding scaling happens inside ``embed_tokens``, so the recorded decoder input is scaled.

Example:
    >>> import vlm_lens as vl                                                   # doctest: +SKIP
    >>> m = vl.load("checkpoints/gemma-3-4b-it")                                # doctest: +SKIP
    >>> vl.trace(m, "photo.jpg", "Rate the quality.").spans["image"].grid       # (16, 16)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from ..core.errors import UnsupportedModelError
from ..core.spans import GridBlock, Span
from .base import Adapter, runs_of

__all__ = ["Gemma3Adapter"]


class Gemma3Adapter(Adapter):
    """Gemma 3 (``model_type="gemma3"``)."""

    family = "gemma3"
    model_types = ("gemma3",)

    def check_config(self, config: Any) -> None:
        side = int(round(config.mm_tokens_per_image ** 0.5))
        patches = config.vision_config.image_size // config.vision_config.patch_size
        if side * side != config.mm_tokens_per_image or patches % side:
            raise UnsupportedModelError(
                f"mm_tokens_per_image={config.mm_tokens_per_image} with {patches} x {patches} patches: the "
                f"{self.family} adapter expects a square number of tokens that pools the patch grid evenly.")

    @property
    def _side(self) -> int:
        return int(round(self.model.config.mm_tokens_per_image ** 0.5))

    # -------------------------------------------------------------------------------------------------- inputs
    def processor_images(self, images: list[list[Image.Image]]) -> Any:
        """Nested per prompt (the processor checks each prompt's placeholders against its own images)."""
        return [list(sample) for sample in images] if any(images) else None

    def image_spans(self, ids: list[int], model_inputs: dict[str, Any], sample: int,
                    images: list[list[Image.Image]]) -> list[Span]:
        side = self._side
        runs = runs_of(ids, self.image_token_id)
        if len(runs) != len(images[sample]) or any(b - a != side * side for a, b in runs):
            raise UnsupportedModelError(
                f"{len(runs)} blocks of image tokens ({[b - a for a, b in runs]}) for {len(images[sample])} image(s) "
                f"of {side * side} tokens: pan-and-scan crops (do_pan_and_scan) are not supported; turn them off.")
        block = GridBlock("base", 0, side, side)
        return [Span(a, b, k, (side, side), (block,)) for k, (a, b) in enumerate(runs)]

    # --------------------------------------------------------------------------------------- forward arguments
    def forward_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       model_inputs: dict[str, Any]) -> dict[str, Any]:
        """Positions counting real tokens, and ``token_type_ids`` (1 on image tokens) for prompt + response."""
        inputs = super().forward_inputs(input_ids, attention_mask, model_inputs)
        inputs["token_type_ids"] = (input_ids == self.image_token_id).long()
        return inputs
