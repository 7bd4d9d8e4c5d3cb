"""What an adapter knows about one family of VLMs, and the default behaviour most families share.

vlm_lens never patches a model. Everything it needs from a family is asked of an :class:`Adapter`:

- **structure**: the decoder layers (a ``ModuleList``), each layer's attention module, the final norm, the output
  head, and the config object the attention modules read ``_attn_implementation`` from;
- **inputs**: how a user prompt becomes the model's chat format, how images and text become model inputs (left
  padded), which decoder positions are image tokens and, when the family has one, their patch grid;
- **forward arguments**: what the teacher-forced pass must be given besides ``input_ids`` (e.g. position ids that
  respect left padding).

A family file subclasses :class:`Adapter`, overrides what differs, and registers itself in
:mod:`vlm_lens.models`. Positions everywhere are *decoder positions*: index ``t`` is the ``t``-th vector that enters
decoder layer 0 (an image that becomes 576 embeddings occupies 576 positions).

An adapter must never change the model: it reads modules and configs, and only :mod:`vlm_lens.tracing.hooks` installs
(and always removes) hooks.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch
from PIL import Image
from torch import nn

from ..core.errors import UnsupportedModelError, VlmLensError
from ..core.spans import Span
from .integrity import check_loading_info

__all__ = ["Adapter", "Encoded", "Prompt", "runs_of", "split_runs"]

_SENTINEL = "\u2063VLMLENS_INSTRUCTION\u2063"


@dataclass
class Encoded:
    """A left-padded batch of prompts, ready for ``generate`` and for the traced forward.

    Attributes:
        input_ids: ``[batch, pos]`` token ids at decoder positions, left padded.
        attention_mask: ``[batch, pos]`` 1 for real tokens, 0 for padding.
        model_inputs: Everything else the model's forward needs (``pixel_values``, ``image_sizes``, ...).
        segments: Per sample, the segment label of each unpadded position (see :data:`SEGMENTS`).
        image_spans: Per sample, the image spans in unpadded positions.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    model_inputs: dict[str, Any]
    segments: list[list[str]]
    image_spans: list[list[Span]]

    def __post_init__(self) -> None:
        if self.input_ids.shape != self.attention_mask.shape or self.input_ids.ndim != 2:
            raise ValueError(f"input_ids {tuple(self.input_ids.shape)} and attention_mask "
                             f"{tuple(self.attention_mask.shape)} must both be [batch, pos]")
        lengths = self.attention_mask.sum(1).tolist()
        for i, (labels, n) in enumerate(zip(self.segments, lengths)):
            if len(labels) != n:
                raise ValueError(f"sample {i}: {len(labels)} segment labels for {n} unpadded positions")

    @property
    def lengths(self) -> list[int]:
        return [int(n) for n in self.attention_mask.sum(1).tolist()]


@dataclass
class Prompt:
    """A prompt rendered in the model's chat format, with the character spans of the user's own words."""

    text: str
    instruction_spans: list[tuple[int, int]] = field(default_factory=list)


class Adapter:
    """Default adapter: a decoder-only language model behind a vision encoder, in the transformers v5 layout.

    Subclasses set :attr:`family` and :attr:`model_types`, and override what their family does differently.

    Args:
        model: The Hugging Face model (``...ForConditionalGeneration``), in eval mode.
        processor: Its processor (image processor + tokenizer), or None for a model used without one.
    """

    family: ClassVar[str] = "generic"
    #: ``config.model_type`` values this adapter handles.
    model_types: ClassVar[tuple[str, ...]] = ()
    #: Template used when the processor has no chat template; ``{image}`` is replaced by the image placeholder
    #: (repeated per image), ``{prompt}`` by the user prompt.
    default_template: ClassVar[str] = "USER: {image}\n{prompt} ASSISTANT:"

    def __init__(self, model: nn.Module, processor: Any | None) -> None:
        self.model = model
        self.processor = processor
        self.check_config(model.config)

    @classmethod
    def from_pretrained(cls, source: str, *, dtype: torch.dtype | None, device_map: Any,
                        attn_implementation: str, trust_remote_code: bool) -> tuple[nn.Module, Any]:
        """Load model and processor from ``source``. Default: transformers' image-text-to-text auto classes,
        with PIL image processors (the torchvision backend is neither required nor bit-identical). Weights that
        are missing, unused or of another shape than the config asks for are refused
        (:func:`~vlm_lens.models.integrity.check_loading_info`), not filled with random values."""
        from transformers import AutoModelForImageTextToText

        model, info = AutoModelForImageTextToText.from_pretrained(
            source, dtype=dtype if dtype is not None else "auto", device_map=device_map,
            attn_implementation=attn_implementation, trust_remote_code=trust_remote_code, output_loading_info=True,
            ignore_mismatched_sizes=True)  # mismatched shapes are reported in ``info`` and refused below
        check_loading_info(source, info)
        try:
            processor = cls.load_processor(source, model, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as err:
            raise VlmLensError(f"{source!r}: the processor could not be loaded ({err}). Save the processor next to "
                               "the weights, or load the model yourself and call vl.wrap(model, processor).") from None
        return model.eval(), processor

    @classmethod
    def load_processor(cls, source: str, model: nn.Module, *, trust_remote_code: bool) -> Any:
        """The processor stored with the checkpoint at ``source`` (``model`` is the model just loaded from there).
        Default: ``AutoProcessor`` with the PIL image processor. Families whose processor also wants a video
        processor (which needs torchvision) override this to compose image processor + tokenizer."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(source, backend="pil", trust_remote_code=trust_remote_code)

    # ----------------------------------------------------------------------------------------------- structure
    def check_config(self, config: Any) -> None:
        """Refuse configurations this adapter would mis-handle. Default: accept."""

    @property
    def language_model(self) -> nn.Module:
        """The decoder stack (``...Model`` holding ``layers`` and ``norm``)."""
        return self.model.model.language_model

    @property
    def layers(self) -> Sequence[nn.Module]:
        return self.language_model.layers

    def attention_module(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn

    @property
    def final_norm(self) -> nn.Module:
        return self.language_model.norm

    @property
    def output_head(self) -> nn.Module:
        return self.model.lm_head

    @property
    def text_config(self) -> Any:
        """The config object the decoder's attention modules read ``_attn_implementation`` from."""
        return self.attention_module(self.layers[0]).config

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_heads(self) -> int:
        return int(self.text_config.num_attention_heads)

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def placeholder_ids(self) -> list[int]:
        """Vocabulary ids that stand for images (or other media) and must never be generated."""
        return [self.image_token_id] if self.image_token_id >= 0 else []

    @property
    def max_positions(self) -> int | None:
        return getattr(self.text_config, "max_position_embeddings", None)

    def unembed(self, normed: torch.Tensor) -> torch.Tensor:
        """Logits from final-normed hidden states ``[..., d_model] -> [..., vocab]`` exactly as the model computes
        them (families with logit soft-capping override this)."""
        return self.output_head(normed)

    # -------------------------------------------------------------------------------------------------- inputs
    @property
    def image_placeholder(self) -> str:
        token = getattr(self.processor, "image_token", None)
        if token is None:
            raise UnsupportedModelError(f"{type(self.processor).__name__} has no `image_token`; the {self.family} "
                                        "adapter cannot place images in the prompt.")
        return token

    def format_prompt(self, prompt: str, n_images: int, *, system: str | None = None,
                      template: bool = True) -> Prompt:
        """Render ``prompt`` with ``n_images`` images in the model's chat format.

        If ``prompt`` already contains the image placeholder (once per image), the images stay where the user put
        them; otherwise they come first in the user turn, as the chat templates of the field do. With
        ``template=False`` the prompt is used verbatim and must contain the placeholders.
        """
        placeholder = self.image_placeholder
        count = prompt.count(placeholder)
        if count not in (0, n_images):
            raise VlmLensError(
                f"prompt contains the image placeholder {placeholder!r} {count} times for {n_images} image(s). "
                f"Either leave it out (the images are placed by the chat template) or write it exactly "
                f"{n_images} time(s).")
        if not template:
            if count != n_images:
                raise VlmLensError(f"template=False needs the prompt to contain {placeholder!r} once per image "
                                   f"({n_images}); it contains it {count} times.")
            return Prompt(prompt, _spans_without(prompt, 0, placeholder))
        if count:
            rendered = self._render(_SENTINEL, 0, system)
        else:
            rendered = self._render(_SENTINEL, n_images, system)
        if rendered.count(_SENTINEL) != 1:
            raise UnsupportedModelError("the chat template did not render the user text exactly once; pass "
                                        "template=False and a fully formatted prompt.")
        start = rendered.index(_SENTINEL)
        text = rendered.replace(_SENTINEL, prompt)
        return Prompt(text, _spans_without(prompt, start, placeholder))

    def _render(self, text: str, n_images: int, system: str | None) -> str:
        chat_template = getattr(self.processor, "chat_template", None)
        if not chat_template:
            if system:
                raise VlmLensError(f"system={system!r}: this processor has no chat template, so a system prompt "
                                   "cannot be placed; put it into the prompt with template=False.")
            return self.default_template.format(image=self.image_placeholder * n_images, prompt=text)
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
        messages = [{"role": "user", "content": content}]
        if system:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def encode(self, images: list[list[Image.Image]], prompts: list[Prompt]) -> Encoded:
        """Process a batch (images per sample, rendered prompts) into a left-padded :class:`Encoded`."""
        batch = self.processor(images=self.processor_images(images), text=[p.text for p in prompts], padding=True,
                               padding_side="left", return_tensors="pt")
        input_ids, attention_mask = batch.pop("input_ids"), batch.pop("attention_mask")
        model_inputs = dict(batch)
        segments, spans = [], []
        for i, prompt in enumerate(prompts):
            ids = input_ids[i][attention_mask[i].bool()].tolist()
            segments.append(self.label_segments(prompt, ids))
            spans.append(self.image_spans(ids, model_inputs, i, images))
        return Encoded(input_ids, attention_mask, model_inputs, segments, spans)

    def processor_images(self, images: list[list[Image.Image]]) -> Any:
        """What :meth:`encode` passes to the processor as ``images=``. Default: one flat list (None when there are
        no images); families whose processor needs to know which images share a prompt return nested lists."""
        flat = [image for sample in images for image in sample]
        return flat or None

    def label_segments(self, prompt: Prompt, ids: list[int]) -> list[str]:
        """Label each position of one unpadded prompt as system / image / instruction.

        The processor expands each image placeholder into many tokens; the tokenizer alone does not. The two id
        sequences are aligned (``difflib``, no junk heuristic) so that every text token inherits the character
        offsets the tokenizer reports, and tokens whose characters overlap the user's words are "instruction".
        """
        tokenizer = self.tokenizer
        try:
            plain = tokenizer(prompt.text, return_offsets_mapping=True, add_special_tokens=True)
        except NotImplementedError:
            raise UnsupportedModelError(f"{type(tokenizer).__name__} cannot report character offsets; vlm_lens "
                                        "needs a fast (tokenizers-backed) tokenizer to label segments.") from None
        plain_ids, offsets = plain["input_ids"], plain["offset_mapping"]
        matcher = difflib.SequenceMatcher(a=ids, b=plain_ids, autojunk=False)
        image = self.image_token_id  # once: the property reads the config, ~12 us a call, per position
        labels = ["image" if t == image else "system" for t in ids]
        for block in matcher.get_matching_blocks():
            for k in range(block.size):
                i, j = block.a + k, block.b + k
                if labels[i] == "image":
                    continue
                lo, hi = offsets[j]
                if hi > lo and any(lo < b and a < hi for a, b in prompt.instruction_spans):
                    labels[i] = "instruction"
        return labels

    def image_spans(self, ids: list[int], model_inputs: dict[str, Any], sample: int,
                    images: list[list[Image.Image]]) -> list[Span]:
        """Image spans of one unpadded sample: runs of the image token, one per image, no grid."""
        return [Span(a, b, k) for k, (a, b) in enumerate(runs_of(ids, self.image_token_id))]

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """Each id decoded on its own, special tokens kept (repeated ids are decoded once). Families whose
        sequences hold ids outside the vocabulary (image markers) override this."""
        tokenizer = self.tokenizer
        cache = {i: tokenizer.decode([i], skip_special_tokens=False) for i in set(ids)}
        return [cache[i] for i in ids]

    # --------------------------------------------------------------------------------------- forward arguments
    def forward_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       model_inputs: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments of the traced forward over ``input_ids`` (prompt + response, left padded).

        Position ids count only real tokens (``cumsum(mask) - 1``), exactly as ``generate`` numbers them, so that a
        left-padded sample sees the same rotary phases as when it runs alone.
        """
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                **model_inputs}

    def response_inputs(self, inputs: dict[str, Any], response_mask: torch.Tensor) -> dict[str, Any]:
        """Adjust the traced forward's keyword arguments (from :meth:`forward_inputs`) for the generated positions.

        ``response_mask`` is ``[batch, pos]``, True at response (generated) positions. Default: unchanged. Families
        whose masking tells the prompt from the answer (PaliGemma's bidirectional prefix) mark them here.
        """
        return inputs

    def generate_inputs(self, encoded: Encoded) -> dict[str, Any]:
        """Keyword arguments of ``model.generate`` for the prompt batch."""
        return {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask, **encoded.model_inputs}

    @property
    def eos_token_ids(self) -> set[int]:
        ids = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if ids is None:
            ids = getattr(self.tokenizer, "eos_token_id", None)
        if ids is None:
            return set()
        return {int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])}

    @property
    def pad_token_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            eos = sorted(self.eos_token_ids)
            pad = eos[0] if eos else 0
        return int(pad)


def runs_of(ids: Sequence[int], token: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each maximal run of ``token`` in ``ids``."""
    runs, start = [], None
    for i, t in enumerate(ids):
        if t == token and start is None:
            start = i
        elif t != token and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(ids)))
    return runs


def split_runs(ids: Sequence[int], token: int, counts: Sequence[int]) -> list[tuple[int, int]]:
    """``[start, stop)`` of each image when images hold ``counts[k]`` consecutive ``token`` positions each.

    Two images written back to back (``<image>\n<image>``) form one run of placeholder tokens; the per-image
    counts split it.

    Raises:
        UnsupportedModelError: The positions of ``token`` do not form one contiguous block per image.
    """
    where = [i for i, t in enumerate(ids) if t == token]
    if len(where) != sum(counts):
        raise UnsupportedModelError(f"{len(where)} image-token positions for images of {list(counts)} tokens; "
                                    "the processor and the model disagree about the number of image tokens.")
    spans, cursor = [], 0
    for count in counts:
        block = where[cursor:cursor + count]
        if block[-1] - block[0] != count - 1:
            raise UnsupportedModelError(f"the {count} tokens of image {len(spans)} are not contiguous.")
        spans.append((block[0], block[-1] + 1))
        cursor += count
    return spans


def _spans_without(prompt: str, start: int, placeholder: str) -> list[tuple[int, int]]:
    """Character spans of ``prompt`` (placed at ``start``) with the image placeholders cut out."""
    spans, cursor = [], 0
    for piece in prompt.split(placeholder):
        if piece:
            spans.append((start + cursor, start + cursor + len(piece)))
        cursor += len(piece) + len(placeholder)
    return spans
