"""The word-level tokenizer of the zoo's checkpoints (and of the tiny test models): built from a word list.

A real BPE tokenizer would need a corpus and a download; the zoo's world has a closed vocabulary (its description
grammar, its questions, a few general words), so each word is one token. The tokenizer is a standard
``tokenizers`` object wrapped in ``PreTrainedTokenizerFast`` and saved with the checkpoint (``tokenizer.json``),
so a zoo checkpoint loads with transformers alone.

Example:
    >>> tok = word_tokenizer(["good", "poor"])
    >>> tok.convert_ids_to_tokens(tok("Good")["input_ids"])
    ['<s>', 'good']
"""

from __future__ import annotations

__all__ = ["BASIC_WORDS", "SPECIAL_TOKENS", "word_tokenizer"]

#: ``<unk>=0, <s>=1, </s>=2, <pad>=3, <image>=4``.
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

#: General words (lower-cased) every word tokenizer of vlm_lens knows, after the special tokens: enough for the
#: questions people ask about quality to tokenize mostly without ``<unk>``.
BASIC_WORDS = """user assistant system : ? . , ! ' how would you rate the quality of this image
picture photo what is it describe in one word a an and with but very slightly heavy noise noisy blur blurry
sharp clear bright dark brightness contrast low high colour color colours saturated faded compression blocky
jpeg artifacts overall level excellent good fair poor bad yes no cat dog sky tree red green blue""".split()


def word_tokenizer(words: list[str] | None = None):
    """A word-level fast tokenizer: lower-cases, splits on spaces and punctuation, adds ``<s>`` in front.

    ``<unk>=0, <s>=1, </s>=2, <pad>=3, <image>=4``; then ``words`` (default :data:`BASIC_WORDS`).
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

    vocab = SPECIAL_TOKENS + [w for w in (words or BASIC_WORDS) if w not in SPECIAL_TOKENS]
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
