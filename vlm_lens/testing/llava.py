"""Tiny random-init LLaVA checkpoints, written to a folder exactly as a real checkpoint is — or built in memory.

Real weights cannot be assumed to be at hand (tests, CI, a first try on a laptop), yet ``vl.load`` must be
exercised on the real loading path. :func:`tiny_llava` writes ``config.json``, ``model.safetensors``, a word-level
tokenizer (``tokenizers``), a PIL image processor and a chat template in the LLaVA-1.5 format to a folder; the
result loads with ``vl.load(path)`` and with transformers' own ``from_pretrained``.

:func:`random_llava` builds the same model and processor in memory, directly on a device and in a dtype: a
7B-shaped decoder (13 GB in bf16) is made on the GPU where it runs, without a detour through the CPU or the disk
(``benchmarks/gpu.py``); ``vl.wrap(model, processor)`` makes it traceable.

Shapes are chosen by the caller, so tests cover several (multi-head, grouped-query, one or many layers).

Example:
    >>> import tempfile, vlm_lens as vl
    >>> path = tiny_llava(tempfile.mkdtemp(), layers=3, kv_heads=2)
    >>> vl.load(path).adapter.n_layers
    3
    >>> model, processor = random_llava(layers=1, vocab=300)
    >>> vl.wrap(model, processor).adapter.tokenizer.convert_ids_to_tokens([299])
    ['w194']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.errors import VlmLensError
from ..models.llava import CHAT_TEMPLATE
from ..zoo.tokenizer import BASIC_WORDS, SPECIAL_TOKENS, word_tokenizer

__all__ = ["VOCABULARY", "random_llava", "tiny_llava"]

#: The words the tiny tokenizer knows (lower-cased), after the special tokens.
VOCABULARY = SPECIAL_TOKENS + BASIC_WORDS


def tiny_llava(path: str | Path, *, layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int | None = None,
               intermediate: int | None = None, vision_hidden: int = 32, vision_layers: int = 2,
               image_size: int = 32, patch: int = 8, next: bool = False, select_strategy: str = "default",
               max_positions: int = 512, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """Write a random-init LLaVA-1.5 (or LLaVA-NeXT with ``next=True``) checkpoint to ``path``.

    Args:
        path: Folder to write (created).
        layers, hidden, heads, kv_heads, intermediate: Decoder shape (LLaMA); ``kv_heads < heads`` gives GQA.
        vision_hidden, vision_layers, image_size, patch: CLIP vision tower shape.
        next: LLaVA-NeXT (anyres: the number of image tokens depends on the image size) instead of LLaVA-1.5.
        select_strategy: ``"default"`` drops the CLS embedding, ``"full"`` keeps it (LLaVA-1.5 only).
        max_positions: The decoder's context length.
        seed: Seed of the random initialisation.

    Returns:
        The folder, ready for ``vl.load``.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    model, processor = random_llava(layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                                    intermediate=intermediate, vision_hidden=vision_hidden,
                                    vision_layers=vision_layers, image_size=image_size, patch=patch, next=next,
                                    select_strategy=select_strategy, max_positions=max_positions, seed=seed,
                                    dtype=dtype)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def random_llava(*, layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int | None = None,
                 intermediate: int | None = None, vocab: int | None = None, vision_hidden: int = 32,
                 vision_layers: int = 2, image_size: int = 32, patch: int = 8, next: bool = False,
                 select_strategy: str = "default", max_positions: int = 512, seed: int = 0,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """Build a random-init LLaVA-1.5 (or LLaVA-NeXT) and its processor in memory, on ``device`` in ``dtype``.

    Args:
        layers, hidden, heads, kv_heads, intermediate: Decoder shape (LLaMA); ``kv_heads < heads`` gives GQA.
        vocab: Vocabulary size; None: the tiny tokenizer's own (:data:`VOCABULARY`). A larger one (e.g. LLaMA's
            32064) extends the tokenizer with filler words ``w0, w1, ...`` so that every id decodes to a word.
        vision_hidden, vision_layers, image_size, patch: CLIP vision tower shape (``(image_size / patch) ** 2``
            image tokens).
        next: LLaVA-NeXT (anyres: the number of image tokens depends on the image size) instead of LLaVA-1.5.
        select_strategy: ``"default"`` drops the CLS embedding, ``"full"`` keeps it (LLaVA-1.5 only).
        max_positions: The decoder's context length.
        seed: Seed of the random initialisation (the same seed gives the same weights on the same device).
        dtype, device: Where the weights are created, and in which dtype: nothing is allocated elsewhere first.

    Returns:
        ``(model, processor)``, the model in eval mode with SDPA attention.
    """
    import transformers as tf

    tokenizer = word_tokenizer(_words(vocab))
    vision = tf.CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                                 num_hidden_layers=vision_layers, num_attention_heads=4, image_size=image_size,
                                 patch_size=patch)
    text = tf.LlamaConfig(hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=heads,
                          num_key_value_heads=kv_heads or heads, vocab_size=len(tokenizer),
                          max_position_embeddings=max_positions, pad_token_id=3, bos_token_id=1, eos_token_id=2,
                          tie_word_embeddings=False)
    common = dict(vision_config=vision, text_config=text, image_token_id=4, vision_feature_layer=-1,
                  vision_feature_select_strategy=select_strategy)
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    if next:
        pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
        config = tf.LlavaNextConfig(**common, image_grid_pinpoints=pinpoints)
        image_processor = tf.LlavaNextImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
            image_grid_pinpoints=pinpoints, image_mean=mean, image_std=std)
        processor = tf.LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                          vision_feature_select_strategy=select_strategy,
                                          chat_template=CHAT_TEMPLATE, num_additional_image_tokens=1)
        model_class = tf.LlavaNextForConditionalGeneration
    else:
        config = tf.LlavaConfig(**common)
        image_processor = tf.CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                                   crop_size={"height": image_size, "width": image_size},
                                                   image_mean=mean, image_std=std)
        processor = tf.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                      vision_feature_select_strategy=select_strategy, chat_template=CHAT_TEMPLATE,
                                      num_additional_image_tokens=1)
        model_class = tf.LlavaForConditionalGeneration
    device = torch.device(device)
    gpus = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus), device:
        torch.manual_seed(seed)
        model = model_class._from_config(config, dtype=dtype).eval()
        _spread_weights(model)
    model.generation_config.pad_token_id = 3
    return model, processor


def _words(vocab: int | None) -> list[str] | None:
    """The tokenizer's words for a vocabulary of ``vocab`` ids (None: the basic ones)."""
    if vocab is None:
        return None
    fillers = vocab - len(VOCABULARY)
    if fillers < 0:
        raise VlmLensError(f"vocab={vocab}: the tiny tokenizer needs at least {len(VOCABULARY)} ids (its special "
                           "tokens and basic words); pass a larger vocabulary or None.")
    return BASIC_WORDS + [f"w{i}" for i in range(fillers)]


@torch.no_grad()
def _spread_weights(model: torch.nn.Module) -> None:
    """Re-draw weights with larger scales than HF's init (std 0.02), so that attention is not uniform and the
    logit lens has a clear top-1: tests of exactness are only meaningful when the numbers are not all alike."""
    for name, param in model.named_parameters():
        if param.ndim >= 2:
            param.normal_(0.0, 1.0 / param.shape[-1] ** 0.5 * (2.0 if "q_proj" in name or "k_proj" in name else 1.0))
        elif "norm" in name and name.endswith("weight"):
            param.uniform_(0.8, 1.2)
        else:
            param.normal_(0.0, 0.05)
