"""Tiny random-init checkpoints of the families beyond LLaVA, written to disk as real checkpoints are.

Each builder writes ``config.json`` + ``model.safetensors`` + the processor files (a word-level fast tokenizer
holding the family's special tokens, the family's PIL image processor, its chat template) to a folder that loads
with ``vl.load(path)`` and with transformers' own ``from_pretrained``. Shapes are tiny (2-3 layers, d_model 32-64,
images of a few dozen pixels) so that a whole family's invariants run in seconds on a CPU; weights are spread out
(:func:`vlm_lens.testing.llava._spread_weights`) so that attention is far from uniform and exactness tests mean something.

Families whose processor also holds a video processor (Qwen2-VL, LLaVA-OneVision, SmolVLM) are saved through
the image-only processor classes of their adapters: transformers' video processors need torchvision, which is not
a vlm_lens dependency.

Example:
    >>> import tempfile, vlm_lens as vl
    >>> m = vl.load(tiny_qwen2_vl(tempfile.mkdtemp()))     # doctest: +SKIP
    >>> m.family                                             # doctest: +SKIP
    'qwen2_vl'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlm_lens.testing.llava import VOCABULARY, _spread_weights

__all__ = ["family_tokenizer", "tiny_gemma3", "tiny_idefics3", "tiny_llava_onevision", "tiny_paligemma",
           "tiny_qwen2_vl", "tiny_vipllava"]

#: Words every tiny tokenizer knows (after the special tokens).
WORDS = VOCABULARY[5:] + "you are helpful model here crops to help see better original".split()
BASE_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def family_tokenizer(specials: list[str], *, bos: bool = True, named: dict[str, str] | None = None):
    """A word-level fast tokenizer: ``<unk>=0, <s>=1, </s>=2, <pad>=3``, then ``specials`` (matched whole, before
    splitting), then :data:`WORDS`.

    Args:
        specials: The family's special tokens (image placeholders, chat markers).
        bos: Whether encoding adds ``<s>`` in front (Gemma and LLaMA do; Qwen does not).
        named: Extra named special tokens (``{"image_token": "<image>"}``) that processors read as attributes.
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    vocab = list(dict.fromkeys(BASE_SPECIALS + list(specials) + WORDS))
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                     pre_tokenizers.Punctuation("isolated")])
    if bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                               special_tokens=[("<s>", 1)])
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>", extra_special_tokens=named or {},
                                        padding_side="left")
    tokenizer.add_special_tokens({"additional_special_tokens": list(specials)}, replace_extra_special_tokens=False)
    return tokenizer


def _save(model: Any, processor: Any, folder: Path, seed: int, generation: dict[str, Any]) -> Path:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        _spread_weights(model)
    model.eval()
    for key, value in generation.items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _init(model_class: type, config: Any, seed: int) -> Any:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return model_class(config)


# ------------------------------------------------------------------------------------------------ Qwen2-VL
QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                 "<|video_pad|>"]
QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nyou are helpful .<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_qwen2_vl(path: str | Path, *, version: str = "2", layers: int = 2, hidden: int = 64, heads: int = 4,
                  kv_heads: int = 2, patch: int = 4, max_pixels: int = 48 * 48, seed: int = 0) -> Path:
    """Qwen2-VL (``version="2"``) or Qwen2.5-VL (``"2.5"``): dynamic resolution, 2x2 merge, M-RoPE.

    Patches are ``patch`` pixels; tokens are 2x2 merged patches, so an image of ``H x W`` pixels (rounded to
    multiples of ``2 * patch``) becomes ``H / (2 patch) x W / (2 patch)`` tokens.
    """
    import transformers as tf

    from vlm_lens.models.qwen2_vl import (
        Qwen2_5_VLImageTextProcessor,
        Qwen2VLImageTextProcessor,
    )

    folder = Path(path)
    tokenizer = family_tokenizer(QWEN_SPECIALS, bos=False)
    ids = dict(zip(QWEN_SPECIALS, tokenizer.convert_tokens_to_ids(QWEN_SPECIALS)))
    head_dim = hidden // heads
    third = head_dim // 2 // 3
    rope = {"rope_type": "default", "rope_theta": 10000.0,
            "mrope_section": [head_dim // 2 - 2 * third, third, third]}
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                max_position_embeddings=512, rope_parameters=rope, bos_token_id=1, eos_token_id=ids["<|im_end|>"],
                pad_token_id=3)
    common = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if version == "2":
        vision = tf.Qwen2VLVisionConfig(depth=2, embed_dim=32, hidden_size=hidden, num_heads=4, mlp_ratio=2,
                                        patch_size=patch, spatial_merge_size=2, temporal_patch_size=2)
        config = tf.Qwen2VLConfig(text_config=tf.Qwen2VLTextConfig(**text).to_dict(),
                                  vision_config=vision.to_dict(), **common)
        model_class, processor_class = tf.Qwen2VLForConditionalGeneration, Qwen2VLImageTextProcessor
    elif version == "2.5":
        vision = tf.Qwen2_5_VLVisionConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=4,
                                           out_hidden_size=hidden, patch_size=patch, spatial_merge_size=2,
                                           temporal_patch_size=2, window_size=4 * patch, fullatt_block_indexes=[1])
        config = tf.Qwen2_5_VLConfig(text_config=tf.Qwen2_5_VLTextConfig(**text).to_dict(),
                                     vision_config=vision.to_dict(), **common)
        model_class, processor_class = tf.Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLImageTextProcessor
    else:
        raise ValueError(f"version={version!r}: expected '2' or '2.5'")
    image_processor = tf.Qwen2VLImageProcessorPil(size={"shortest_edge": (4 * patch) ** 2, "longest_edge": max_pixels},
                                                  patch_size=patch, merge_size=2, temporal_patch_size=2)
    processor = processor_class(image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_TEMPLATE)
    model = _init(model_class, config, seed)
    return _save(model, processor, folder, seed, {"eos_token_id": ids["<|im_end|>"], "pad_token_id": 3})


# ------------------------------------------------------------------------------------------- LLaVA-OneVision
ONEVISION_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_llava_onevision(path: str | Path, *, layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                         image_size: int = 16, patch: int = 4, aspect_ratio: str = "anyres_max_2",
                         seed: int = 0) -> Path:
    """LLaVA-OneVision: SigLIP + Qwen2, anyres crops (unpadded, newline per row, shrunk past ``aspect_ratio``) for
    a single image, base grid + one newline for each image of a multi-image prompt."""
    import transformers as tf

    from vlm_lens.models.llava_onevision import LlavaOnevisionImageTextProcessor

    folder = Path(path)
    specials = ["<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    tokenizer = family_tokenizer(specials, bos=False, named={"image_token": "<image>", "video_token": "<video>"})
    ids = dict(zip(specials, tokenizer.convert_tokens_to_ids(specials)))
    vision = tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   image_size=image_size, patch_size=patch)
    text = tf.Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                          max_position_embeddings=1024, bos_token_id=1, eos_token_id=ids["<|im_end|>"], pad_token_id=3)
    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    config = tf.LlavaOnevisionConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                                     image_token_index=ids["<image>"], video_token_index=ids["<video>"],
                                     vision_feature_select_strategy="full", vision_feature_layer=-1,
                                     image_grid_pinpoints=pinpoints, vision_aspect_ratio=aspect_ratio)
    image_processor = tf.LlavaOnevisionImageProcessorPil(size={"height": image_size, "width": image_size},
                                                         image_grid_pinpoints=pinpoints, image_mean=CLIP_MEAN,
                                                         image_std=CLIP_STD)
    processor = LlavaOnevisionImageTextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=(image_size // patch) ** 2,
        vision_feature_select_strategy="full", vision_aspect_ratio=aspect_ratio, chat_template=ONEVISION_TEMPLATE)
    model = _init(tf.LlavaOnevisionForConditionalGeneration, config, seed)
    return _save(model, processor, folder, seed, {"eos_token_id": ids["<|im_end|>"], "pad_token_id": 3})


# ------------------------------------------------------------------------------------------ Idefics3 / SmolVLM
IDEFICS3_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def tiny_idefics3(path: str | Path, *, smolvlm: bool = False, layers: int = 2, hidden: int = 64, heads: int = 4,
                  kv_heads: int = 2, tile: int = 16, patch: int = 4, longest_edge: int = 32, seed: int = 0) -> Path:
    """Idefics3 (or SmolVLM with ``smolvlm=True``): images split into ``tile``-pixel tiles (up to
    ``longest_edge / tile`` per side) plus a global view, each tile ``(tile / patch / 2)^2`` tokens after the 2x2
    pixel shuffle, framed by ``<fake_token_around_image>`` and ``<row_r_col_c>`` / ``<global-img>`` markers."""
    import transformers as tf

    folder = Path(path)
    markers = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    specials = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *markers]
    named = {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
             "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"}
    tokenizer = family_tokenizer(specials, bos=True, named=named if smolvlm else None)
    ids = dict(zip(specials, tokenizer.convert_tokens_to_ids(specials)))
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=tile,
                  patch_size=patch)
    text = tf.LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                          max_position_embeddings=1024, bos_token_id=1, eos_token_id=ids["<end_of_utterance>"],
                          pad_token_id=3)
    sizes = dict(size={"longest_edge": longest_edge}, max_image_size={"longest_edge": tile}, do_image_splitting=True)
    seq_len = (tile // patch) ** 2 // 4
    if smolvlm:
        from vlm_lens.models.idefics3 import SmolVLMImageTextProcessor

        config = tf.SmolVLMConfig(vision_config=tf.SmolVLMVisionConfig(**vision).to_dict(), text_config=text.to_dict(),
                                  image_token_id=ids["<image>"], scale_factor=2)
        processor = SmolVLMImageTextProcessor(image_processor=tf.SmolVLMImageProcessorPil(**sizes), tokenizer=tokenizer,
                                              image_seq_len=seq_len, chat_template=IDEFICS3_TEMPLATE)
        model_class = tf.SmolVLMForConditionalGeneration
    else:
        config = tf.Idefics3Config(vision_config=tf.Idefics3VisionConfig(**vision).to_dict(),
                                   text_config=text.to_dict(), image_token_id=ids["<image>"], scale_factor=2)
        processor = tf.Idefics3Processor(image_processor=tf.Idefics3ImageProcessorPil(**sizes), tokenizer=tokenizer,
                                         image_seq_len=seq_len, chat_template=IDEFICS3_TEMPLATE)
        model_class = tf.Idefics3ForConditionalGeneration
    model = _init(model_class, config, seed)
    return _save(model, processor, folder, seed, {"eos_token_id": ids["<end_of_utterance>"], "pad_token_id": 3})


# ---------------------------------------------------------------------------------------------------- PaliGemma
def tiny_paligemma(path: str | Path, *, version: int = 1, layers: int = 2, hidden: int = 64, heads: int = 4,
                   kv_heads: int = 1, image_size: int = 16, patch: int = 4, sliding_window: int = 12,
                   seed: int = 0) -> Path:
    """PaliGemma (``version=1``: Gemma decoder) or PaliGemma 2 (``version=2``: Gemma 2 decoder with logit
    soft-capping and sliding-window layers). Prompts have no chat template: ``<image>``s, ``<bos>``, the prompt,
    ``\\n``; image and prompt attend to each other bidirectionally (the prefix), the answer causally."""
    import transformers as tf

    folder = Path(path)
    tokenizer = family_tokenizer(["<image>"], bos=False, named={"image_token": "<image>"})
    image_processor = tf.SiglipImageProcessorPil(size={"height": image_size, "width": image_size},
                                                 image_seq_length=(image_size // patch) ** 2)
    processor = tf.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)  # adds <loc>/<seg> words
    vision = tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   image_size=image_size, patch_size=patch, projection_dim=hidden)
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
                max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    if version == 1:
        text_config = tf.GemmaConfig(**text)
    elif version == 2:
        text_config = tf.Gemma2Config(**text, query_pre_attn_scalar=hidden // heads, sliding_window=sliding_window,
                                      attn_logit_softcapping=50.0, final_logit_softcapping=3.0,
                                      layer_types=["sliding_attention", "full_attention"] * (layers // 2)
                                      + ["sliding_attention"] * (layers % 2))
    else:
        raise ValueError(f"version={version!r}: expected 1 or 2")
    config = tf.PaliGemmaConfig(vision_config=vision.to_dict(), text_config=text_config.to_dict(),
                                image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                                projection_dim=hidden, hidden_size=hidden)
    model = _init(tf.PaliGemmaForConditionalGeneration, config, seed)
    return _save(model, processor, folder, seed, {"eos_token_id": 2, "pad_token_id": 3})


# ------------------------------------------------------------------------------------------------------ Gemma 3
GEMMA3_TEMPLATE = (
    "{% for message in messages %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<start_of_image>{% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def tiny_gemma3(path: str | Path, *, layers: int = 3, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                image_size: int = 32, patch: int = 4, tokens_per_image: int = 16, sliding_window: int = 8,
                final_logit_softcapping: float | None = None, seed: int = 0) -> Path:
    """Gemma 3: SigLIP patches average-pooled to ``tokens_per_image`` (a square grid) framed by
    ``<start_of_image>``/``<end_of_image>``; a decoder with sliding-window layers (all but every third) whose image
    blocks attend bidirectionally; ``(1 + w)`` RMSNorms and embeddings scaled by ``sqrt(d_model)``."""
    import transformers as tf

    folder = Path(path)
    specials = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    named = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tokenizer = family_tokenizer(specials, bos=True, named=named)
    ids = dict(zip(specials, tokenizer.convert_tokens_to_ids(specials)))
    text = tf.Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                               num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                               head_dim=hidden // heads, query_pre_attn_scalar=hidden // heads,
                               sliding_window=sliding_window, max_position_embeddings=1024,
                               layer_types=["full_attention" if (i + 1) % 3 == 0 else "sliding_attention"
                                            for i in range(layers)],
                               final_logit_softcapping=final_logit_softcapping, bos_token_id=1,
                               eos_token_id=ids["<end_of_turn>"], pad_token_id=3)
    vision = tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   image_size=image_size, patch_size=patch)
    config = tf.Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                             mm_tokens_per_image=tokens_per_image, boi_token_index=ids["<start_of_image>"],
                             eoi_token_index=ids["<end_of_image>"], image_token_index=ids["<image_soft_token>"])
    image_processor = tf.Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = tf.Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=GEMMA3_TEMPLATE,
                                   image_seq_length=tokens_per_image)
    model = _init(tf.Gemma3ForConditionalGeneration, config, seed)
    return _save(model, processor, folder, seed, {"eos_token_id": ids["<end_of_turn>"], "pad_token_id": 3})


# ------------------------------------------------------------------------- a family without adapter: VipLLaVA
def tiny_vipllava(path: str | Path, *, layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                   image_size: int = 32, patch: int = 8, seed: int = 0) -> Path:
    """VipLLaVA: LLaVA-1.5's layout (CLIP, projector over several vision layers, LLaMA) under a ``model_type``
    vlm_lens has no adapter for, to exercise the generic adapter."""
    import transformers as tf

    from vlm_lens.models.llava import CHAT_TEMPLATE

    folder = Path(path)
    tokenizer = family_tokenizer(["<image>"], bos=True, named={"image_token": "<image>"})
    vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                 image_size=image_size, patch_size=patch)
    text = tf.LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                          max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    config = tf.VipLlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                               image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                               vision_feature_layer=[-2, -1], image_seq_length=(image_size // patch) ** 2)
    image_processor = tf.CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                               crop_size={"height": image_size, "width": image_size},
                                               image_mean=CLIP_MEAN, image_std=CLIP_STD)
    processor = tf.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                  vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                                  num_additional_image_tokens=1)
    model = _init(tf.VipLlavaForConditionalGeneration, config, seed)
    return _save(model, processor, folder, seed, {"eos_token_id": 2, "pad_token_id": 3})
