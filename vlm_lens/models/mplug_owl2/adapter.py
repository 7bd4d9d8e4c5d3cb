"""The vlm_lens adapter of the mPLUG-Owl2 family (mPLUG-Owl2, Q-Instruct, Q-Align).

The module tree it relies on is the port's (see :mod:`.modeling`)::

    MPLUGOwl2ForCausalLM
    ├── model                  MPLUGOwl2Model: embed_tokens, layers[i] (self_attn = MultiwayAttention), norm,
    │                          rotary_emb, vision_model, visual_abstractor
    └── lm_head

Decoder positions. Every image occupies ``T`` positions (64 abstractor queries + the ``vit_eos`` end token: 65 at
7B; 9 in the reference fixture). They are learned queries, not a spatial grid, so image spans have no ``grid``.
In :class:`~vlm_lens.models.Encoded` these positions hold the id -200 (``<|image|>``: no vocabulary id; the
tokens table shows ``"<|image|>"``), ``T`` times per image, left padded like any other batch. The model is called
with ``images_expanded=True`` so that it reads them as positions rather than as the original's one-per-image
markers; the original's own layout is what ``processor(...)`` returns.

Example:
    >>> import vlm_lens as vl                                                             # doctest: +SKIP
    >>> m = vl.load("checkpoints/q-instruct")                                             # doctest: +SKIP
    >>> t = vl.trace(m, "photo.jpg", "Rate the quality of the image.", generate=8)        # doctest: +SKIP
    >>> m.adapter.prompt_format = "q-align"   # Q-Align's scoring prompt for the next traces  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from torch import nn

from ...core.errors import UnsupportedModelError, VlmLensError
from ...core.spans import Span
from ..base import Adapter, Encoded, Prompt, runs_of
from .configuration import IMAGE_TOKEN_INDEX
from .modeling import MPLUGOwl2ForCausalLM
from .processing import IMAGE_PLACEHOLDER, MPLUGOwl2Processor
from .prompts import PromptFormat, prompt_format
from .weights import load_model

__all__ = ["MPLUGOwl2Adapter"]

_SENTINEL = "\u2063VLMLENS_QUESTION\u2063"


class MPLUGOwl2Adapter(Adapter):
    """mPLUG-Owl2 (``model_type="mplug_owl2"``), with the vlm_lens port as the model.

    Attributes:
        prompt_format: The named format :meth:`format_prompt` uses (``"q-instruct"`` by default, or
            ``"q-align"``; see :data:`~vlm_lens.models.mplug_owl2.PROMPT_FORMATS`).
    """

    family = "mplug_owl2"
    model_types = ("mplug_owl2",)

    def __init__(self, model: nn.Module, processor: Any | None) -> None:
        super().__init__(model, processor)
        self._prompt_format = "q-instruct"

    @classmethod
    def from_pretrained(cls, source: str, *, dtype: torch.dtype | None, device_map: Any, attn_implementation: str,
                        trust_remote_code: bool) -> tuple[nn.Module, Any]:
        """Load the port from an official checkpoint folder; remote code is never needed (nor run)."""
        folder = Path(source)
        if not folder.is_dir():
            raise VlmLensError(f"{source!r}: mPLUG-Owl2 checkpoints are loaded from a local folder (config.json, "
                               "weights, preprocessor_config.json, tokenizer); download it and pass its path.")
        model = load_model(folder, dtype=dtype, device=_device(device_map), attn_implementation=attn_implementation)
        return model, MPLUGOwl2Processor.from_pretrained(folder)

    # ----------------------------------------------------------------------------------------------- structure
    def check_config(self, config: Any) -> None:
        if not isinstance(self.model, MPLUGOwl2ForCausalLM):
            raise UnsupportedModelError(f"the mplug_owl2 adapter works on vlm_lens's port "
                                        f"(vlm_lens.models.mplug_owl2.MPLUGOwl2ForCausalLM), got "
                                        f"{type(self.model).__name__}; load the checkpoint with vl.load(path).")
        if self.processor is not None and not isinstance(self.processor, MPLUGOwl2Processor):
            raise UnsupportedModelError(f"processor: expected an MPLUGOwl2Processor (mean-colour padding + CLIP + "
                                        f"marker-aware tokenization), got {type(self.processor).__name__}.")

    @property
    def language_model(self) -> nn.Module:
        return self.model.model

    @property
    def image_token_id(self) -> int:
        return IMAGE_TOKEN_INDEX

    @property
    def image_placeholder(self) -> str:
        return IMAGE_PLACEHOLDER

    @property
    def tokens_per_image(self) -> int:
        return int(self.model.config.visual_tokens_per_image)

    @property
    def prompt_format(self) -> str:
        return self._prompt_format

    @prompt_format.setter
    def prompt_format(self, name: str) -> None:
        self._prompt_format = prompt_format(name).name

    # -------------------------------------------------------------------------------------------------- inputs
    def format_prompt(self, prompt: str, n_images: int, *, system: str | None = None, template: bool = True,
                      style: str | PromptFormat | None = None) -> Prompt:
        """Render ``prompt`` in the format ``style``: a name, a :class:`~.prompts.PromptFormat`, or None for
        :attr:`prompt_format`.

        The images go where the format puts them, unless the prompt holds ``<|image|>`` once per image. The family
        has no system prompt; ``template=False`` uses the prompt verbatim (it must hold the placeholders).
        """
        count = prompt.count(IMAGE_PLACEHOLDER)
        if count not in (0, n_images) or (not template and count != n_images):
            raise VlmLensError(f"prompt contains {IMAGE_PLACEHOLDER!r} {count} times for {n_images} image(s). Write "
                               f"it exactly once per image{'' if not template else ', or leave it out'}.")
        if system:
            raise VlmLensError(f"system={system!r}: the mPLUG-Owl2 formats (Q-Instruct, Q-Align) have no system "
                               "prompt; write it into the prompt with template=False if you need one.")
        if not template:
            return Prompt(prompt, _question_spans(prompt, 0))
        fmt = style if isinstance(style, PromptFormat) else prompt_format(style or self._prompt_format)
        question = prompt if prompt.strip() or fmt.default_question is None else fmt.default_question
        if count:
            rendered = fmt.inline_template.format(question=_SENTINEL)
        else:
            rendered = fmt.template.format(question=_SENTINEL, images=IMAGE_PLACEHOLDER * n_images)
        start = rendered.index(_SENTINEL)
        return Prompt(rendered.replace(_SENTINEL, question), _question_spans(question, start))

    def encode(self, images: list[list[Image.Image]], prompts: list[Prompt]) -> Encoded:
        """Tokenize as the original does, expand every marker to ``T`` positions, left pad, preprocess images."""
        processor = self._processor()
        rows, segments, spans = [], [], []
        for i, prompt in enumerate(prompts):
            tokenized = processor.tokenize(prompt.text)
            if tokenized.n_images != len(images[i]):
                raise VlmLensError(f"prompt {i} holds {tokenized.n_images} {IMAGE_PLACEHOLDER} marker(s) for "
                                   f"{len(images[i])} image(s); write the marker once per image.")
            ids = _expand(tokenized.ids, self.tokens_per_image)
            rows.append(ids)
            segments.append(self.label_segments(prompt, ids))
            spans.append(self.image_spans(ids, {}, i, images))
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, width - len(row):] = 1
        flat = [image for sample in images for image in sample]
        pixel_values = processor.preprocess(flat) if flat else None
        return Encoded(input_ids, attention_mask, {"images": pixel_values}, segments, spans)

    def label_segments(self, prompt: Prompt, ids: list[int]) -> list[str]:
        """Exact labels from the tokenizer's own character spans (no alignment needed: the ids are built here)."""
        tokenized = self._processor().tokenize(prompt.text)
        labels = []
        for token, span in zip(tokenized.ids, tokenized.spans):
            if token == IMAGE_TOKEN_INDEX:
                labels.extend(["image"] * self.tokens_per_image)
            elif span is not None and any(span[0] < b and a < span[1] for a, b in prompt.instruction_spans):
                labels.append("instruction")
            else:
                labels.append("system")
        if len(labels) != len(ids):
            raise RuntimeError(f"segment labels ({len(labels)}) and ids ({len(ids)}) disagree")
        return labels

    def image_spans(self, ids: list[int], model_inputs: dict[str, Any], sample: int,
                    images: list[list[Image.Image]]) -> list[Span]:
        """One span of ``T`` positions per image (adjacent images are split every ``T``); no grid."""
        size, spans = self.tokens_per_image, []
        for start, stop in runs_of(ids, IMAGE_TOKEN_INDEX):
            if (stop - start) % size:
                raise UnsupportedModelError(f"an image run of {stop - start} positions is not a multiple of "
                                            f"{size}; the ids were not built by this adapter.")
            spans.extend(Span(a, a + size, len(spans)) for a in range(start, stop, size))
        return spans

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        tokenizer = self.tokenizer
        texts = {}
        for i in set(ids):
            if i == IMAGE_TOKEN_INDEX:
                texts[i] = IMAGE_PLACEHOLDER
            elif tokenizer is None:
                texts[i] = f"<{i}>"
            else:
                texts[i] = tokenizer.decode([i], skip_special_tokens=False)
        return [texts[i] for i in ids]

    # --------------------------------------------------------------------------------------- forward arguments
    def forward_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       model_inputs: dict[str, Any]) -> dict[str, Any]:
        """The port derives positions from the mask itself (real tokens only), so only the layout flag is added."""
        return {"input_ids": input_ids, "attention_mask": attention_mask, "images": model_inputs.get("images"),
                "images_expanded": True}

    def generate_inputs(self, encoded: Encoded) -> dict[str, Any]:
        return self.forward_inputs(encoded.input_ids, encoded.attention_mask, encoded.model_inputs)

    def _processor(self) -> MPLUGOwl2Processor:
        if self.processor is None:
            raise VlmLensError("this model was wrapped without a processor; load it with vl.load(path) or pass "
                               "MPLUGOwl2Processor.from_pretrained(path) to vl.wrap.")
        return self.processor


def _expand(ids: list[int], size: int) -> list[int]:
    out: list[int] = []
    for token in ids:
        out.extend([token] * size if token == IMAGE_TOKEN_INDEX else [token])
    return out


def _question_spans(text: str, start: int) -> list[tuple[int, int]]:
    """Character spans of ``text`` placed at ``start``, with the image placeholders cut out."""
    spans, cursor = [], 0
    for piece in text.split(IMAGE_PLACEHOLDER):
        if piece:
            spans.append((start + cursor, start + cursor + len(piece)))
        cursor += len(piece) + len(IMAGE_PLACEHOLDER)
    return spans


def _device(device_map: Any) -> torch.device | None:
    """The one device a ``device_map`` names; the port does not split a model across devices."""
    if device_map is None:
        return None
    if isinstance(device_map, (str, torch.device, int)) and str(device_map) not in ("auto", "balanced", "sequential"):
        return torch.device(device_map)
    if isinstance(device_map, dict) and set(device_map) == {""}:
        return torch.device(device_map[""])
    raise UnsupportedModelError(f"device_map={device_map!r}: the mPLUG-Owl2 port loads onto one device; pass "
                                "device='cuda' (or device_map='cuda:1').")
