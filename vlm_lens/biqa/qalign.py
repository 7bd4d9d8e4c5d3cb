"""Q-Align on the mPLUG-Owl2 family: its scoring prompt format, and the score of an image in one call.

Q-Align asks ``USER: How would you rate the quality of this image?\\n<|image|>\\nASSISTANT: The quality of the image
is`` and reads the next token: the score is the expectation of the level weights under the softmax of the five
level words' logits at that position (:func:`~vlm_lens.biqa.quality.weighted_score`; every other logit is
ignored). On LLaMA's tokenizer the level words excellent / good / fair / poor / bad are the ids
:data:`LLAMA_LEVEL_IDS`; weights ``[1, .75, .5, .25, 0]`` (``"0-1"``, Q-Align's release) or ``[5, 4, 3, 2, 1]``
(``"1-5"``).

``import vlm_lens`` registers :data:`QALIGN_FORMAT` with the family as ``"q-align"`` (``m.adapter.prompt_format =
"q-align"`` traces with it).

Example:
    >>> import vlm_lens as vl                                                       # doctest: +SKIP
    >>> m = vl.load("checkpoints/one-align")                                        # doctest: +SKIP
    >>> qalign_score(m, "photo.jpg")                       # 0..1                   # doctest: +SKIP
    0.71
    >>> qalign_score(m, ["a.jpg", "b.jpg"], weights="1-5")  # one batched forward   # doctest: +SKIP
    [3.9, 2.2]
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..core.errors import VlmLensError
from ..core.images import load_image
from ..models.mplug_owl2.prompts import PromptFormat
from ..tracing.loading import LensModel
from .answer import level_token_ids
from .quality import weighted_score
from .vocabulary import ANSWER_PREFIX, LEVELS, QALIGN_PROMPT

__all__ = ["LLAMA_LEVEL_IDS", "QALIGN_FORMAT", "qalign_score"]

#: The ids of the level words in the LLaMA tokenizer of the official checkpoints.
LLAMA_LEVEL_IDS = (15129, 1781, 6534, 6460, 4319)

#: Q-Align's scoring format of the mPLUG-Owl2 family: the next token after it decides the level.
QALIGN_FORMAT = PromptFormat("q-align", f"USER: {{question}}\n{{images}}\nASSISTANT: {ANSWER_PREFIX}",
                             f"USER: {{question}}\nASSISTANT: {ANSWER_PREFIX}", default_question=QALIGN_PROMPT)


@torch.no_grad()
def qalign_score(model: LensModel, images: Any, *, weights: str | Sequence[float] = "0-1",
                 token_ids: Sequence[int] | None = None, question: str | None = None) -> float | list[float]:
    """The Q-Align score of one image (a float) or of a list of images (one batched forward; a list).

    Args:
        model: An mPLUG-Owl2 / Q-Align model from :func:`vlm_lens.load`.
        images: A path, PIL image or array, or a list of them.
        weights: ``"0-1"`` (default), ``"1-5"``, or one weight per level word.
        token_ids: The level words' ids (default: from the tokenizer; LLaMA gives :data:`LLAMA_LEVEL_IDS`).
        question: Replaces "How would you rate the quality of this image?".

    Example:
        >>> qalign_score(vl.load("checkpoints/one-align"), "photo.jpg", weights="1-5")   # doctest: +SKIP
    """
    adapter = model.adapter
    if getattr(adapter, "family", None) != "mplug_owl2":
        raise VlmLensError(f"qalign_score needs an mPLUG-Owl2-family model (Q-Align); got family "
                           f"{getattr(adapter, 'family', None)!r}.")
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    ids = level_token_ids(adapter.tokenizer, LEVELS) if token_ids is None else [int(i) for i in token_ids]
    pictures = [[load_image(x, argument=f"images[{k}]")] for k, x in enumerate(items)]
    prompts = [adapter.format_prompt(question or "", 1, style=QALIGN_FORMAT) for _ in items]
    encoded = adapter.encode(pictures, prompts)
    inputs = adapter.forward_inputs(encoded.input_ids.to(model.device), encoded.attention_mask.to(model.device),
                                    {k: v.to(model.device) if isinstance(v, torch.Tensor) else v
                                     for k, v in encoded.model_inputs.items()})
    logits = model.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1]
    if min(ids) < 0 or max(ids) >= logits.shape[-1]:
        raise VlmLensError(f"token_ids {ids} fall outside the vocabulary [0, {logits.shape[-1]}).")
    scores = weighted_score(logits[..., ids].float(), weights).float().tolist()
    return scores[0] if single else scores
