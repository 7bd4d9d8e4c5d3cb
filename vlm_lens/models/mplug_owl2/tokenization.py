"""Text to ids the way the original mPLUG-Owl2 code builds them: chunk by chunk around ``<|image|>``.

The original never shows ``<|image|>`` to the tokenizer. ``tokenizer_image_token`` splits the prompt on the
marker, tokenizes every chunk on its own with the *slow* (SentencePiece) LLaMA tokenizer of transformers 4.31,
keeps the BOS of the first chunk only and puts -200 between chunks. Tokenizing chunks separately matters: each
chunk starts a new SentencePiece sentence and so gets the dummy-prefix space (``"<|image|>How"`` -> ``▁How``).

:class:`ChunkEncoder` reproduces a chunk's ids:

- with the checkpoint's ``tokenizer.model`` and the ``sentencepiece`` package (the official checkpoints): by
  SentencePiece itself, exactly like the slow tokenizer. Special-token strings inside a chunk (``</s>`` ending an
  assistant turn) are split out first and map to their ids; the text after one gets a dummy prefix again unless
  the checkpoint's ``tokenizer_config.json`` says ``"legacy": false``.
- otherwise (a checkpoint with ``tokenizer.json`` only): by the transformers tokenizer, which agrees with
  SentencePiece except for chunks that start with a space (SentencePiece then emits an extra ``▁``).

Character offsets come with the ids, so vlm_lens labels the user's words exactly.

Example:
    >>> encoder = ChunkEncoder(tokenizer, sentencepiece_model)      # doctest: +SKIP
    >>> encoder.encode("\\nASSISTANT: The quality of the image is")  # doctest: +SKIP
    ([29871, 13, 22933, ...], [(0, 0), (0, 1), (1, 4), ...])
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

__all__ = ["ChunkEncoder", "load_sentencepiece"]

Span = tuple[int, int]


def load_sentencepiece(folder: Path) -> tuple[Any, bool] | None:
    """``(SentencePieceProcessor, legacy)`` for ``folder/tokenizer.model``, or None without the file or package."""
    path = folder / "tokenizer.model"
    if not path.exists():
        return None
    try:
        import sentencepiece
    except ImportError:
        return None
    legacy = True  # transformers 4.31's default when tokenizer_config.json does not say
    config = folder / "tokenizer_config.json"
    if config.exists():
        value = json.loads(config.read_text()).get("legacy")
        legacy = True if value is None else bool(value)
    return sentencepiece.SentencePieceProcessor(model_file=str(path)), legacy


class ChunkEncoder:
    """Encode the text between two image markers (no BOS) with character spans.

    Example:
        >>> encoder = ChunkEncoder(tokenizer, *load_sentencepiece(Path("checkpoints/q-align")))  # doctest: +SKIP
        >>> encoder.encode("How would you rate")                                                   # doctest: +SKIP

    Args:
        tokenizer: The transformers tokenizer (special tokens, and the fallback encoder).
        sentencepiece_model: The checkpoint's ``SentencePieceProcessor``, or None.
        legacy: The slow tokenizer's ``legacy`` flag (dummy prefix after special tokens).
    """

    def __init__(self, tokenizer: Any, sentencepiece_model: Any = None, legacy: bool = True) -> None:
        self.tokenizer = tokenizer
        self.sp = sentencepiece_model
        self.legacy = legacy
        specials = sorted({str(t) for t in getattr(tokenizer, "all_special_tokens", [])}
                          | set(getattr(tokenizer, "added_tokens_encoder", {})), key=len, reverse=True)
        self._special_ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in specials}
        self._split = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        empty = tokenizer("", add_special_tokens=True)["input_ids"]
        #: Whether the tokenizer puts BOS in front of every text it tokenizes (LLaMA: yes).
        self.adds_bos = bool(empty) and empty[0] == tokenizer.bos_token_id

    def encode(self, text: str) -> tuple[list[int], list[Span | None]]:
        """Ids of ``text`` (no BOS) and each id's character span in ``text`` (None where it covers nothing)."""
        if self.sp is None:
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            return list(encoded["input_ids"]), [_span(lo, hi) for lo, hi in encoded["offset_mapping"]]
        ids: list[int] = []
        spans: list[Span | None] = []
        start = 0
        pieces = self._split.split(text) if self._split else [text]
        for k, piece in enumerate(pieces):
            if k % 2:  # a special-token string
                ids.append(self._special_ids[piece])
                spans.append((start, start + len(piece)))
            elif piece:
                piece_ids, offsets = self._sentencepiece(piece, prefix=self.legacy or k == 0)
                ids.extend(piece_ids)
                spans.extend(_span(start + lo, start + hi) for lo, hi in offsets)
            start += len(piece)
        return ids, spans

    def _sentencepiece(self, text: str, prefix: bool) -> tuple[list[int], list[Span]]:
        """SentencePiece ids and offsets; ``prefix=False`` drops the dummy-prefix space (non-legacy text after a
        special token), by encoding behind the unk piece and removing its tokens."""
        if prefix:
            out = self.sp.encode(text, return_type="offset_mapping")
            return list(out["ids"]), list(out["offsets"])
        guard = self.sp.id_to_piece(self.sp.unk_id())
        skip = len(self.sp.encode(guard))
        out = self.sp.encode(guard + text, return_type="offset_mapping")
        return (list(out["ids"][skip:]),
                [(max(lo - len(guard), 0), max(hi - len(guard), 0)) for lo, hi in out["offsets"][skip:]])


def _span(lo: int, hi: int) -> Span | None:
    return (int(lo), int(hi)) if hi > lo else None
