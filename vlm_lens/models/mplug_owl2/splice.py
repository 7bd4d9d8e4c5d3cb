"""Putting images into the token sequence: ``-200`` markers -> visual positions -> embeddings and modalities.

Two layouts of ``input_ids`` are accepted:

- **markers** (the original code's inputs): one ``IMAGE_TOKEN_INDEX`` (-200) per image; each becomes the image's
  ``T`` visual tokens (64 abstractor queries + the end token: ``T = 65`` at 7B). ``attention_mask`` has one entry per
  id; the marker's entry is repeated over its ``T`` positions.
- **expanded** (vlm_lens's decoder positions): ``T`` consecutive -200 per image, so that ``input_ids`` has one
  entry per decoder position and ``attention_mask`` is already right.

Expanding markers is done at the marker, inside each row, so left padding stays on the left; rows that end up with
different lengths (different numbers of images) are padded on the left. The original instead prepends the extra
mask entries at the start of the row, which is wrong under left padding (see the port's docs); for unpadded and
right-padded inputs the two agree.

Example:
    >>> import torch
    >>> ids, mask, labels = expand_image_markers(torch.tensor([[1, 5, -200, 7]]), None, tokens_per_image=3)
    >>> ids.tolist()
    [[1, 5, -200, -200, -200, 7]]
"""

from __future__ import annotations

import torch
from torch import nn

from ...core.errors import VlmLensError
from .configuration import IMAGE_TOKEN_INDEX

__all__ = ["check_image_count", "expand_image_markers", "splice_embeddings"]


def expand_image_markers(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, tokens_per_image: int,
                         pad_token_id: int = 0, labels: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Replace every -200 marker by ``tokens_per_image`` copies (markers layout -> expanded layout).

    Args:
        input_ids: ``[b, n]`` with one -200 per image.
        attention_mask: ``[b, n]`` or None.
        tokens_per_image: ``T``.
        pad_token_id: Id written where rows are padded to a common length.
        labels: ``[b, n]`` training targets, or None; the visual positions get -100 (ignored by the loss).

    Returns:
        ``(input_ids, attention_mask, labels)``, each ``[b, n']`` (or None); rows padded on the left (mask 0,
        label -100) where their lengths differ.
    """
    is_image = input_ids == IMAGE_TOKEN_INDEX
    if not bool(is_image.any()):
        return input_ids, attention_mask, labels
    repeats = torch.where(is_image, tokens_per_image, 1)
    ids = _expand_rows(input_ids, repeats, pad_token_id)
    mask = _expand_rows(attention_mask, repeats, 0) if attention_mask is not None else None
    if mask is None and any(int(r.sum()) != ids.shape[1] for r in repeats):
        mask = _expand_rows(torch.ones_like(input_ids), repeats, 0)
    if labels is not None:
        labels = _expand_rows(labels, repeats, -100).masked_fill(ids == IMAGE_TOKEN_INDEX, -100)
    return ids, mask, labels


def _expand_rows(values: torch.Tensor, repeats: torch.Tensor, fill: int) -> torch.Tensor:
    rows = [torch.repeat_interleave(values[i], repeats[i]) for i in range(values.shape[0])]
    width = max(len(row) for row in rows)
    out = values.new_full((len(rows), width), fill)
    for i, row in enumerate(rows):
        out[i, width - len(row):] = row
    return out


def check_image_count(input_ids: torch.Tensor, n_images: int, tokens_per_image: int, expanded: bool) -> None:
    """Raise unless the -200 positions of ``input_ids`` hold exactly ``n_images`` images.

    Args:
        input_ids: ``[b, pos]`` in the layout named by ``expanded``.
        n_images: Number of images given (``images.shape[0]``; 0 for none).
        tokens_per_image: ``T``.
        expanded: True for the expanded layout (``T`` positions per image), False for markers.
    """
    per_row = (input_ids == IMAGE_TOKEN_INDEX).sum(1).tolist()
    if expanded:
        bad = [i for i, n in enumerate(per_row) if n % tokens_per_image]
        if bad:
            raise VlmLensError(f"input_ids rows {bad} hold {[per_row[i] for i in bad]} image positions (-200), not a "
                               f"multiple of the {tokens_per_image} positions one image occupies; with "
                               "images_expanded=True every image must fill exactly that many positions.")
        per_row = [n // tokens_per_image for n in per_row]
    if sum(per_row) != n_images:
        unit = "image blocks" if expanded else "<|image|> markers (-200)"
        raise VlmLensError(f"input_ids hold {sum(per_row)} {unit} (per row: {per_row}) but {n_images} image(s) were "
                           "given; pass exactly one image per marker, in order (row by row).")


def splice_embeddings(embed_tokens: nn.Embedding, input_ids: torch.Tensor,
                      visual_tokens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed text ids and write the images' visual tokens into the -200 positions (expanded layout).

    Args:
        embed_tokens: The decoder's token embedding.
        input_ids: ``[b, pos]``, ``T`` consecutive -200 per image.
        visual_tokens: ``[images, T, d]`` in the order the images appear (row by row), or None.

    Returns:
        ``(inputs_embeds [b, pos, d], modality_indicators [b, pos])`` with indicator 1 at the visual positions.
    """
    is_image = input_ids == IMAGE_TOKEN_INDEX
    embeds = embed_tokens(input_ids.masked_fill(is_image, 0))
    if visual_tokens is not None and visual_tokens.numel():
        embeds = embeds.masked_scatter(is_image[..., None], visual_tokens.to(embeds.dtype))
    return embeds, is_image.long()
