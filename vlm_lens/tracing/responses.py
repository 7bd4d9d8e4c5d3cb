"""``trace(..., response=...)``: trace a given answer, teacher-forced, instead of generating one.

Why: the effect of an intervention on a decision is measured on the same text — the answer the model gave without
it — so that only the intervention differs. One generation then serves any number of interventions, each one
teacher-forced pass, all in one batch (``vl.trace(m, [image] * k, [prompt] * k, response=[base] * k,
intervene=[[a], [b], ...])``). A given answer is traced exactly as a generated one: its positions are labelled
``response``, and families that mask the answer differently (PaliGemma's causal suffix) treat it the same way.

Example:
    >>> base = vl.trace(m, image, prompt, generate=8)                                   # doctest: +SKIP
    >>> again = vl.trace(m, image, prompt, response=base)     # == base, without generating   # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.errors import VlmLensError
from .record import Trace

if TYPE_CHECKING:
    from .loading import LensModel
    from .settings import Generation

__all__ = ["given_responses"]


def given_responses(model: "LensModel", response: Any, n_prompts: int | None,
                    generation: "Generation | None") -> list[list[int]] | None:
    """``response=`` as given to ``trace`` -> one list of token ids per prompt (None when not given).

    Args:
        n_prompts: Number of prompts of a batch, None for a single prompt.
    """
    if response is None:
        return None
    if generation is not None:
        raise VlmLensError("response= and generate= both say where the answer comes from; pass generate=0 to trace "
                           "the given response, or drop response= to generate one.")
    if n_prompts is None:
        return [_ids(model, response, "response")]
    if not isinstance(response, (list, tuple)) or len(response) != n_prompts:
        raise VlmLensError(f"response: with {n_prompts} prompts, expected a list of {n_prompts} answers (token ids "
                           f"or a Trace each); got {type(response).__name__}"
                           f"{f' of length {len(response)}' if isinstance(response, (list, tuple)) else ''}.")
    return [_ids(model, r, f"response[{i}]") for i, r in enumerate(response)]


def _ids(model: "LensModel", answer: Any, argument: str) -> list[int]:
    if isinstance(answer, Trace):
        return list(answer.response_ids)
    if not isinstance(answer, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool)
                                                        for t in answer):
        raise VlmLensError(f"{argument}: expected token ids (a list of integers) or a Trace whose answer to trace, "
                           f"got {type(answer).__name__}.")
    vocab = int(model.adapter.output_head.weight.shape[0])
    bad = [t for t in answer if not 0 <= t < vocab or t in model.adapter.placeholder_ids]
    if bad:
        raise VlmLensError(f"{argument}: token ids {bad[:5]} are not answer tokens of this model (valid: "
                           f"0..{vocab - 1}, image placeholders excluded).")
    return list(answer)
