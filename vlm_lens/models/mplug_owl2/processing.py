"""Images and text in, the original code's inputs out: mean-colour padding, CLIP preprocessing, marker-aware ids.

**Images.** mPLUG-Owl2 / Q-Align pad every image to a square with the CLIP mean colour (``(122, 116, 104)`` =
``int(255 * mean)``) before CLIP preprocessing (bicubic resize of the short side, centre crop, rescale,
normalise). The CLIP part is transformers' own image processor read from the checkpoint's
``preprocessor_config.json`` with the PIL backend, which reproduces the original pixels bit for bit (the
torchvision backend differs by up to 2/255).

**Text.** The official checkpoints use the LLaMA SentencePiece tokenizer. The original never tokenizes
``<|image|>``: it splits the prompt on the marker, tokenizes each chunk on its own (so each chunk gets
SentencePiece's dummy-prefix space, e.g. ``"<|image|>How"`` gives ``▁How``), keeps the BOS of the first chunk only,
and puts -200 between the chunks. :meth:`MPLUGOwl2Processor.tokenize` does exactly that — with SentencePiece
itself when the checkpoint has ``tokenizer.model`` (see :mod:`.tokenization`) — and also reports each token's
character span in the prompt (for vlm_lens's segment labels).

Reading ``tokenizer.model`` with transformers needs the ``sentencepiece`` and ``protobuf`` packages (or a
``tokenizer.json`` next to it).

Example:
    >>> processor = MPLUGOwl2Processor.from_pretrained("checkpoints/q-align")                 # doctest: +SKIP
    >>> batch = processor("USER: <|image|>Rate it. ASSISTANT:", images=[image])              # doctest: +SKIP
    >>> batch["input_ids"]     # [[1, 3148, 1001, 29901, 29871, -200, ...]]                    # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from ...core.errors import VlmLensError
from .configuration import IMAGE_TOKEN_INDEX
from .tokenization import ChunkEncoder, load_sentencepiece

__all__ = ["IMAGE_PLACEHOLDER", "MPLUGOwl2Processor", "TokenizedText", "expand2square"]

#: How prompts mark an image.
IMAGE_PLACEHOLDER = "<|image|>"


def expand2square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad ``image`` to a square of side ``max(w, h)`` filled with ``background``, the image centred.

    Example:
        >>> expand2square(Image.new("RGB", (4, 2)), (1, 2, 3)).getpixel((0, 0))
        (1, 2, 3)
    """
    width, height = image.size
    if width == height:
        return image
    canvas = Image.new(image.mode, (max(width, height),) * 2, background)
    canvas.paste(image, (0, (width - height) // 2) if width > height else ((height - width) // 2, 0))
    return canvas


@dataclass
class TokenizedText:
    """One prompt's ids in the original layout.

    Attributes:
        ids: Token ids with one -200 per ``<|image|>``.
        spans: Per id, its ``(start, stop)`` characters in the prompt (None for the markers and BOS).
    """

    ids: list[int]
    spans: list[tuple[int, int] | None]

    @property
    def n_images(self) -> int:
        return self.ids.count(IMAGE_TOKEN_INDEX)


class MPLUGOwl2Processor:
    """Image processor + tokenizer of an mPLUG-Owl2 checkpoint.

    Example:
        >>> processor = MPLUGOwl2Processor.from_pretrained("checkpoints/q-align")       # doctest: +SKIP
        >>> processor.tokenize("USER: <|image|>Rate it. ASSISTANT:").ids                # doctest: +SKIP
        >>> processor.preprocess([Image.open("photo.jpg").convert("RGB")]).shape       # doctest: +SKIP
        torch.Size([1, 3, 448, 448])

    Args:
        image_processor: A CLIP image processor (``CLIPImageProcessorPil`` gives the original's pixels).
        tokenizer: The LLaMA tokenizer, or None (ids are then built by hand, as in the reference fixture).
        sentencepiece_model: The checkpoint's ``SentencePieceProcessor``: chunks are then encoded by SentencePiece
            itself, as the original's slow tokenizer did (see :mod:`.tokenization`).
        legacy: The slow tokenizer's ``legacy`` flag (from ``tokenizer_config.json``).
        pad_to_square: Pad images to a square with the mean colour first (the checkpoints' ``"pad"`` aspect-ratio
            mode, which Q-Align and Q-Instruct use).
    """

    image_token = IMAGE_PLACEHOLDER

    def __init__(self, image_processor: Any, tokenizer: Any = None, sentencepiece_model: Any = None,
                 legacy: bool = True, pad_to_square: bool = True) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.pad_to_square = pad_to_square
        self.chunks = ChunkEncoder(tokenizer, sentencepiece_model, legacy) if tokenizer is not None else None

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "MPLUGOwl2Processor":
        """Read ``preprocessor_config.json`` (PIL backend), the tokenizer if the folder has one, and the
        ``image_aspect_ratio`` of ``config.json`` (absent or ``"pad"``: pad to square; anything else: do not)."""
        from transformers import AutoImageProcessor

        folder = Path(folder)
        if not (folder / "preprocessor_config.json").exists():
            raise VlmLensError(f"{folder} has no preprocessor_config.json; the mPLUG-Owl2 checkpoints ship one (CLIP, "
                               "448 px). Copy it from the official checkpoint.")
        image_processor = AutoImageProcessor.from_pretrained(str(folder), backend="pil")
        aspect = None
        if (folder / "config.json").exists():
            aspect = json.loads((folder / "config.json").read_text()).get("image_aspect_ratio")
        tokenizer = _load_tokenizer(folder)
        sentencepiece_model, legacy = None, True
        if tokenizer is not None:
            sentencepiece_model, legacy = load_sentencepiece(folder) or (None, True)
        return cls(image_processor, tokenizer, sentencepiece_model, legacy, pad_to_square=aspect in (None, "pad"))

    # ---------------------------------------------------------------------------------------------------- images
    @property
    def background(self) -> tuple[int, int, int]:
        """The padding colour: ``int(255 * x)`` for each channel of the CLIP mean (122, 116, 104)."""
        return tuple(int(x * 255) for x in self.image_processor.image_mean)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``images`` (RGB) -> pixel values ``[n, 3, S, S]`` float32."""
        if self.pad_to_square:
            images = [expand2square(image, self.background) for image in images]
        return self.image_processor(list(images), return_tensors="pt")["pixel_values"]

    # ------------------------------------------------------------------------------------------------------ text
    def tokenize(self, text: str) -> TokenizedText:
        """Ids of ``text`` the way the original ``tokenizer_image_token`` builds them, with character spans.

        Each chunk between ``<|image|>`` markers is encoded on its own (:class:`.tokenization.ChunkEncoder`); the
        tokenizer's BOS goes in front of the first chunk only; -200 stands for each marker.
        """
        self._require_tokenizer()
        ids: list[int] = [self.tokenizer.bos_token_id] if self.chunks.adds_bos else []
        spans: list[tuple[int, int] | None] = [None] * len(ids)
        start = 0
        for k, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if k:
                ids.append(IMAGE_TOKEN_INDEX)
                spans.append(None)
            chunk_ids, chunk_spans = self.chunks.encode(chunk)
            ids.extend(int(i) for i in chunk_ids)
            spans.extend(None if s is None else (start + s[0], start + s[1]) for s in chunk_spans)
            start += len(chunk) + len(IMAGE_PLACEHOLDER)
        return TokenizedText(ids, spans)

    def __call__(self, text: str | Sequence[str], images: Sequence[Image.Image] | None = None) -> dict[str, Any]:
        """The original code's inputs for a prompt or a batch: ``input_ids`` (one -200 per image, left padded with
        the pad/eos id), ``attention_mask`` and ``images`` (pixel values, or None)."""
        texts = [text] if isinstance(text, str) else list(text)
        rows = [self.tokenize(t).ids for t in texts]
        n_images = sum(row.count(IMAGE_TOKEN_INDEX) for row in rows)
        if n_images != len(images or []):
            raise VlmLensError(f"the prompt(s) hold {n_images} {IMAGE_PLACEHOLDER} marker(s) but {len(images or [])} "
                               "image(s) were given; pass one image per marker, in order.")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), int(pad or 0), dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row):] = torch.tensor(row)
            attention_mask[i, width - len(row):] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "images": self.preprocess(images) if images else None}

    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise VlmLensError("this mPLUG-Owl2 checkpoint has no tokenizer (tokenizer.model / tokenizer.json); "
                               "text cannot be tokenized. Copy the LLaMA tokenizer files of the official checkpoint "
                               "into the folder, or build input_ids yourself (-200 marks an image).")
        return self.tokenizer


def _load_tokenizer(folder: Path) -> Any:
    """The checkpoint's tokenizer, or None when the folder has none."""
    from transformers import AutoTokenizer, LlamaConfig

    has_json, has_model = (folder / "tokenizer.json").exists(), (folder / "tokenizer.model").exists()
    if not (has_json or has_model):
        return None
    if not has_json:
        missing = [name for name in ("sentencepiece", "google.protobuf") if not _importable(name)]
        if missing:
            raise VlmLensError(f"{folder}/tokenizer.model is a SentencePiece (LLaMA) tokenizer; reading it needs the "
                               f"packages {['protobuf' if m == 'google.protobuf' else m for m in missing]} "
                               "(pip install sentencepiece protobuf), or a tokenizer.json saved next to it.")
    try:  # the tokenizer is LLaMA's: say so, rather than let transformers look up model_type "mplug_owl2"
        return AutoTokenizer.from_pretrained(str(folder), config=LlamaConfig())
    except (OSError, ValueError) as err:
        raise VlmLensError(f"{folder}: the tokenizer could not be loaded ({err}).") from None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
