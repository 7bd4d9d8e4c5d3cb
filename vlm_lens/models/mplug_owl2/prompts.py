"""The prompt formats of the mPLUG-Owl2 family, by name, and the Q-Align score.

Formats (``{question}`` is the user's text; ``<|image|>`` is placed once per image):

- ``"q-instruct"`` — Q-Instruct / mPLUG-Owl2 chat: ``USER: <|image|>{question} ASSISTANT:`` (no system prompt; an
  assistant turn ends with ``</s>``).
- ``"q-align"`` — Q-Align scoring: ``USER: {question}\\n<|image|>\\nASSISTANT: The quality of the image is``, with
  the question ``How would you rate the quality of this image?`` when none is given. The next token decides the
  level.

The Q-Align score is the expectation of the level weights under the softmax of the five level words' logits at the
last position (all other logits are ignored):
``sum_i softmax(logits[ids])_i * w_i`` with words excellent / good / fair / poor / bad, LLaMA ids
``15129, 1781, 6534, 6460, 4319``, and weights ``[1, .75, .5, .25, 0]`` (0-1 scale) or ``[5, 4, 3, 2, 1]``.

Example:
    >>> import vlm_lens as vl                                                       # doctest: +SKIP
    >>> m = vl.load("checkpoints/one-align")                                        # doctest: +SKIP
    >>> qalign_score(m, "photo.jpg")                       # 0..1                   # doctest: +SKIP
    0.71
    >>> qalign_score(m, ["a.jpg", "b.jpg"], weights="1-5")  # one batched forward   # doctest: +SKIP
    [3.9, 2.2]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ...errors import VlmLensError

#: The five level words of Q-Align (the same as :data:`vlm_lens.answer.LEVELS`, which imports the model registry).
LEVELS = ("excellent", "good", "fair", "poor", "bad")

__all__ = ["LEVELS", "LLAMA_LEVEL_IDS", "PROMPT_FORMATS", "PromptFormat", "QALIGN_WEIGHTS", "level_token_ids",
           "qalign_score", "qalign_score_from_logits"]

#: Their ids in the LLaMA tokenizer of the official checkpoints (the token after BOS of each word).
LLAMA_LEVEL_IDS = (15129, 1781, 6534, 6460, 4319)
#: Named weight sets of the Q-Align score.
QALIGN_WEIGHTS = {"0-1": (1.0, 0.75, 0.5, 0.25, 0.0), "1-5": (5.0, 4.0, 3.0, 2.0, 1.0)}


@dataclass(frozen=True)
class PromptFormat:
    """A conversation format.

    Attributes:
        name: Its name in :data:`PROMPT_FORMATS`.
        template: The rendering with ``{images}`` (the placeholders) and ``{question}``.
        inline_template: The rendering when the question already holds the placeholders.
        default_question: Used when the question is empty (None: an empty question stays empty).
    """

    name: str
    template: str
    inline_template: str
    default_question: str | None = None


PROMPT_FORMATS = {
    "q-instruct": PromptFormat("q-instruct", "USER: {images}{question} ASSISTANT:", "USER: {question} ASSISTANT:"),
    "q-align": PromptFormat("q-align", "USER: {question}\n{images}\nASSISTANT: The quality of the image is",
                            "USER: {question}\nASSISTANT: The quality of the image is",
                            default_question="How would you rate the quality of this image?"),
}


def prompt_format(name: str) -> PromptFormat:
    """The format called ``name``, or an error listing the known ones."""
    try:
        return PROMPT_FORMATS[name]
    except (KeyError, TypeError):
        raise VlmLensError(f"prompt format {name!r} is unknown; the mPLUG-Owl2 family has "
                           f"{sorted(PROMPT_FORMATS)}.") from None


def level_token_ids(tokenizer: Any, words: Sequence[str] = LEVELS) -> list[int]:
    """The id of each level word: the token after BOS when the word is tokenized alone (as Q-Align does).

    Raises:
        VlmLensError: No tokenizer, or a word that is not a single token after BOS.
    """
    if tokenizer is None:
        raise VlmLensError("no tokenizer to find the level words' ids; pass token_ids=[...] (LLaMA: "
                           f"{list(LLAMA_LEVEL_IDS)}).")
    ids, problems = [], []
    for word in words:
        pieces = tokenizer(word, add_special_tokens=True)["input_ids"]
        body = pieces[1:] if pieces[:1] == [tokenizer.bos_token_id] else pieces
        if len(body) != 1:
            problems.append(f"{word!r} -> {tokenizer.convert_ids_to_tokens(body)}")
        else:
            ids.append(int(body[0]))
    if problems:
        raise VlmLensError("level words must each be one token after BOS; these are not: " + "; ".join(problems)
                           + ". Pass token_ids=[...] instead.")
    return ids


def qalign_score_from_logits(logits: torch.Tensor, token_ids: Sequence[int],
                             weights: str | Sequence[float] = "0-1") -> torch.Tensor:
    """``[..., vocab]`` next-token logits -> ``[...]`` Q-Align scores (float32).

    Example:
        >>> logits = torch.zeros(1, 10); logits[0, 3] = 50.0        # all mass on the first level word
        >>> float(qalign_score_from_logits(logits, [3, 4, 5, 6, 7]))
        1.0
    """
    w = torch.tensor(QALIGN_WEIGHTS[weights] if isinstance(weights, str) and weights in QALIGN_WEIGHTS
                     else _weights(weights), dtype=torch.float32)
    ids = list(token_ids)
    if len(ids) != len(w):
        raise VlmLensError(f"token_ids has {len(ids)} ids for {len(w)} weights; give one id per level.")
    if min(ids) < 0 or max(ids) >= logits.shape[-1]:
        raise VlmLensError(f"token_ids {ids} fall outside the vocabulary [0, {logits.shape[-1]}).")
    from ...iqa import weighted_score  # imported here: vlm_lens.iqa imports the model registry

    return weighted_score(logits[..., ids].float(), w.tolist()).float()


def _weights(weights: Any) -> list[float]:
    if isinstance(weights, str):
        raise VlmLensError(f"weights={weights!r}: expected one of {sorted(QALIGN_WEIGHTS)} or a list of numbers.")
    return [float(x) for x in weights]


@torch.no_grad()
def qalign_score(model: Any, images: Any, *, weights: str | Sequence[float] = "0-1",
                 token_ids: Sequence[int] | None = None, question: str | None = None) -> float | list[float]:
    """The Q-Align score of one image (a float) or of a list of images (one batched forward; a list).

    Example:
        >>> qalign_score(vl.load("checkpoints/one-align"), "photo.jpg", weights="1-5")   # doctest: +SKIP

    Args:
        model: An mPLUG-Owl2 / Q-Align model from :func:`vlm_lens.load`.
        images: A path, PIL image or array, or a list of them.
        weights: ``"0-1"`` (default), ``"1-5"``, or one weight per level word.
        token_ids: The level words' ids (default: from the tokenizer; LLaMA gives :data:`LLAMA_LEVEL_IDS`).
        question: Replaces "How would you rate the quality of this image?".
    """
    from ...images import load_image

    adapter = model.adapter
    if getattr(adapter, "family", None) != "mplug_owl2":
        raise VlmLensError(f"qalign_score needs an mPLUG-Owl2-family model (Q-Align); got family "
                           f"{getattr(adapter, 'family', None)!r}.")
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    ids = level_token_ids(adapter.tokenizer) if token_ids is None else [int(i) for i in token_ids]
    pictures = [[load_image(x, argument=f"images[{k}]")] for k, x in enumerate(items)]
    prompts = [adapter.format_prompt(question or "", 1, style="q-align") for _ in items]
    encoded = adapter.encode(pictures, prompts)
    inputs = adapter.forward_inputs(encoded.input_ids.to(model.device), encoded.attention_mask.to(model.device),
                                    {k: v.to(model.device) if isinstance(v, torch.Tensor) else v
                                     for k, v in encoded.model_inputs.items()})
    logits = model.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1]
    scores = qalign_score_from_logits(logits, ids, weights).tolist()
    return scores[0] if single else scores
