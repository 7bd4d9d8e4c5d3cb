"""Tiny random-init LLaVA checkpoints, written to a folder exactly as a real checkpoint is.

Real weights cannot be assumed to be at hand (tests, CI, a first try on a laptop), yet ``vl.load`` must be
exercised on the real loading path. These builders write ``config.json``, ``model.safetensors``, a word-level
tokenizer (``tokenizers``), a PIL image processor and a chat template in the LLaVA-1.5 format to a folder; the
result loads with ``vl.load(path)`` and with transformers' own ``from_pretrained``.

Shapes are chosen by the caller, so tests cover several (multi-head, grouped-query, one or many layers).

Example:
    >>> import tempfile, vlm_lens as vl
    >>> path = tiny_llava(tempfile.mkdtemp(), layers=3, kv_heads=2)
    >>> vl.load(path).adapter.n_layers
    3
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["VOCABULARY", "CHAT_TEMPLATE", "tiny_llava", "word_tokenizer"]

_SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

#: The words the tiny tokenizer knows (lower-cased), after the special tokens.
VOCABULARY = _SPECIAL + """user assistant system : ? . , ! ' how would you rate the quality of this image
picture photo what is it describe in one word a an and with but very slightly heavy noise noisy blur blurry
sharp clear bright dark brightness contrast low high colour color colours saturated faded compression blocky
jpeg artifacts overall level excellent good fair poor bad yes no cat dog sky tree red green blue""".split()

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


def word_tokenizer(words: list[str] | None = None):
    """A word-level fast tokenizer: lower-cases, splits on spaces and punctuation, adds ``<s>`` in front.

    ``<unk>=0, <s>=1, </s>=2, <pad>=3, <image>=4``; then ``words`` (default :data:`VOCABULARY`'s words).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = _SPECIAL + [w for w in (words or VOCABULARY[len(_SPECIAL):]) if w not in _SPECIAL]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                     pre_tokenizers.Punctuation("isolated")])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                           special_tokens=[("<s>", 1)])
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": "<image>"},
                                   padding_side="left")


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
    import transformers as tf

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = word_tokenizer()
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
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_class(config).to(dtype).eval()
        _spread_weights(model)
    model.generation_config.pad_token_id = 3
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


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
