"""PaliGemma and PaliGemma 2 adapter: a bidirectional prefix (image + prompt), a causal answer.

The module tree it relies on (transformers v5)::

    PaliGemmaForConditionalGeneration
    ├── model
    │   ├── vision_tower            SigLIP vision encoder
    │   ├── multi_modal_projector   Linear
    │   └── language_model          GemmaModel (PaliGemma) / Gemma2Model (PaliGemma 2): ``embed_tokens`` (scaled by
    │                               sqrt(d_model)), ``layers[i].self_attn``, ``norm`` (RMSNorm with ``1 + w``)
    └── lm_head                     logits soft-capped by ``final_logit_softcapping`` when the decoder has one (PG2)

Prompt format. PaliGemma has no chat template: the processor turns ``"<image>" * n + prompt`` into ``n *
image_seq_length`` ``<image>`` ids, ``<bos>``, the prompt and ``"\\n"``; the answer follows. An image is a fixed
``side x side`` grid of SigLIP patches (``side = image_size / patch``), the span's grid. Every prompt needs an image.

Masking. ``token_type_ids`` mark the prefix (0: image + prompt, attending to each other in both directions) and
the suffix (1: the answer, causal); the processor returns them for the prompt, and the traced forward rebuilds them
for prompt + answer (:meth:`PaliGemmaAdapter.response_inputs`). Positions are 1-based, as PaliGemma numbers them.
Attention rows need nothing else: the mask the model builds (bidirectional prefix, PG2's sliding windows) reaches
the attention function, and PG2's attention soft-capping arrives as its ``softcap`` argument.

PaliGemma 2's Gemma 2 decoder does not run under SDPA in transformers (SDPA has no soft-capping), so ``vl.load``
loads it with eager attention (and says so); rows are then the eager weights themselves. Under any other
implementation (flex, or a registered one) the rows are recomputed with the soft-cap, as the tests do.

Example:
    >>> import vlm_lens as vl                                                   # doctest: +SKIP
    >>> m = vl.load("checkpoints/paligemma-3b-mix-224")                         # doctest: +SKIP
    >>> vl.trace(m, "photo.jpg", "answer en how is the quality?", generate=4).answer  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from PIL import Image
from torch import nn

from ..core.errors import UnsupportedModelError, VlmLensError
from ..core.spans import GridBlock, Span
from .base import Adapter, Encoded, Prompt, split_runs

__all__ = ["PaliGemmaAdapter"]


class PaliGemmaAdapter(Adapter):
    """PaliGemma / PaliGemma 2 (``model_type="paligemma"``)."""

    family = "paligemma"
    model_types = ("paligemma",)
    #: No chat template: the images, then the prompt (the processor adds ``<bos>`` and the closing newline).
    default_template = "{image}{prompt}"

    @classmethod
    def from_pretrained(cls, source: str, *, dtype: torch.dtype | None, device_map: Any, attn_implementation: str,
                        trust_remote_code: bool) -> tuple[nn.Module, Any]:
        """As :meth:`Adapter.from_pretrained`; a Gemma 2 decoder asked for SDPA is loaded with eager attention
        (with a warning), since transformers refuses SDPA for it."""
        from transformers import AutoConfig

        text = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code).get_text_config()
        if attn_implementation == "sdpa" and text.model_type == "gemma2":
            warnings.warn(f"{source}: PaliGemma 2's Gemma 2 decoder cannot run SDPA in transformers (SDPA has no "
                          "attention soft-capping); loading it with attn_implementation='eager'.", stacklevel=3)
            attn_implementation = "eager"
        return super().from_pretrained(source, dtype=dtype, device_map=device_map,
                                       attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)

    def check_config(self, config: Any) -> None:
        text = config.get_text_config()
        if text.model_type not in ("gemma", "gemma2"):
            raise UnsupportedModelError(f"text_config.model_type={text.model_type!r}: the {self.family} adapter "
                                        "knows PaliGemma's Gemma and Gemma 2 decoders only.")

    def unembed(self, normed: torch.Tensor) -> torch.Tensor:
        """``lm_head``, then ``tanh(logits / cap) * cap`` when the decoder has a ``final_logit_softcapping``."""
        logits = self.output_head(normed)
        cap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    # -------------------------------------------------------------------------------------------------- inputs
    def encode(self, images: list[list[Image.Image]], prompts: list[Prompt]) -> Encoded:
        missing = [i for i, sample in enumerate(images) if not sample]
        if missing:
            raise VlmLensError(f"images[{missing[0]}] is None: PaliGemma's prompts always start with an image "
                               "(its processor refuses text alone). Pass an image for every prompt.")
        encoded = super().encode(images, prompts)
        encoded.model_inputs.pop("labels", None)  # the processor's training labels (-100 over the prefix)
        return encoded

    def image_spans(self, ids: list[int], model_inputs: dict[str, Any], sample: int,
                    images: list[list[Image.Image]]) -> list[Span]:
        side = int(self.model.config.vision_config.image_size // self.model.config.vision_config.patch_size)
        block = GridBlock("base", 0, side, side)
        runs = split_runs(ids, self.image_token_id, [block.length] * len(images[sample]))
        return [Span(start, stop, k, (side, side), (block,)) for k, (start, stop) in enumerate(runs)]

    # --------------------------------------------------------------------------------------- forward arguments
    def forward_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       model_inputs: dict[str, Any]) -> dict[str, Any]:
        """1-based positions counting real tokens (``generate`` adds 1 to ``cumsum(mask) - 1`` for PaliGemma), and
        ``token_type_ids`` of the whole prefix (the answer is marked by :meth:`response_inputs`)."""
        position_ids = attention_mask.long().cumsum(-1).clamp(min=1)
        return {**model_inputs, "input_ids": input_ids, "attention_mask": attention_mask,
                "position_ids": position_ids, "token_type_ids": torch.zeros_like(input_ids)}

    def response_inputs(self, inputs: dict[str, Any], response_mask: torch.Tensor) -> dict[str, Any]:
        """The generated answer is PaliGemma's causal suffix (``token_type_ids`` 1), as in ``generate``."""
        return {**inputs, "token_type_ids": response_mask.long()}
