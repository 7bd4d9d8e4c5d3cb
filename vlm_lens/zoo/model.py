"""The zoo's architecture: a standard Hugging Face LLaVA-1.5 checkpoint, only small.

Built from the real classes (``CLIPVisionConfig``, ``LlamaConfig``, ``LlavaConfig``, ``LlavaProcessor`` with the PIL
``CLIPImageProcessorPil``) and saved with ``save_pretrained``, so ``vl.load("zoo:...")`` takes exactly the path a
downloaded checkpoint takes. The choice of sizes is explained in ``docs/zoo.md``: a 64x64 image in 8x8 patches
gives 64 image tokens (enough to show where attention goes, few enough for CPU training); a 4-layer CLIP tower
of width 128 is what the pretraining stage can train in minutes; 8 decoder layers of width 128 give the logit lens
and attention analyses a depth to look at.

The training code feeds the vision tower tensors made by :func:`pixel_values` instead of calling the processor per
image; the test suite checks the two agree.

Example:
    >>> model, processor = build(seed=0)
    >>> model.config.text_config.num_hidden_layers, model.config.vision_config.patch_size
    (8, 8)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..models.llava import CHAT_TEMPLATE
from .grammar import VOCABULARY
from .tokenizer import SPECIAL_TOKENS, word_tokenizer

__all__ = ["Architecture", "IMAGE_MEAN", "IMAGE_STD", "build", "pixel_values", "tokenizer"]

IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's, as LLaVA-1.5 uses
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Architecture:
    """Sizes of the zoo model (defaults: the shipped checkpoints)."""

    image_size: int = 64
    patch: int = 8
    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    hidden: int = 128
    layers: int = 8
    heads: int = 4
    kv_heads: int = 4
    intermediate: int = 256
    max_positions: int = 256

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


def tokenizer():
    """The zoo's word-level tokenizer (:data:`.grammar.VOCABULARY`; ``<image>`` = 4, ``<pad>`` = 3)."""
    return word_tokenizer(VOCABULARY[len(SPECIAL_TOKENS):])


def build(arch: Architecture = Architecture(), seed: int = 0):
    """A freshly initialised zoo model and its processor.

    Returns:
        ``(LlavaForConditionalGeneration, LlavaProcessor)``; the model is in train mode, float32.
    """
    import transformers as tf

    tok = tokenizer()
    vision = tf.CLIPVisionConfig(hidden_size=arch.vision_hidden, intermediate_size=4 * arch.vision_hidden,
                                 num_hidden_layers=arch.vision_layers, num_attention_heads=arch.vision_heads,
                                 image_size=arch.image_size, patch_size=arch.patch)
    text = tf.LlamaConfig(hidden_size=arch.hidden, intermediate_size=arch.intermediate,
                          num_hidden_layers=arch.layers, num_attention_heads=arch.heads,
                          num_key_value_heads=arch.kv_heads, vocab_size=len(tok),
                          max_position_embeddings=arch.max_positions, pad_token_id=tok.pad_token_id,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    config = tf.LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                            image_seq_length=arch.image_tokens, vision_feature_layer=-1, vision_feature_select_strategy="default")
    image_processor = tf.CLIPImageProcessorPil(size={"shortest_edge": arch.image_size},
                                               crop_size={"height": arch.image_size, "width": arch.image_size},
                                               image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD))
    processor = tf.LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=arch.patch,
                                  vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                                  num_additional_image_tokens=1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = tf.LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model, processor


def pixel_values(images: np.ndarray) -> torch.Tensor:
    """``[n, H, W, 3]`` uint8 -> ``[n, 3, H, W]`` float32, as the processor makes them (rescale, CLIP normalise)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std
