"""The logit lens: what each layer's residual stream would say if decoded through the output head.

For a hidden state ``h`` of any layer, the lens is ``unembed(final_norm(h))`` — the model's own final norm
applied to that layer's *own* state (never a scale cached from the last layer), then the model's own output head
(with soft-capping for families that cap logits). Two traps this module avoids:

- Hugging Face's ``output_hidden_states[-1]`` is already normed; vlm_lens stores raw layer outputs (hooks), so
  the norm is applied exactly once to every layer, including the last: the lens of the last layer *is* the model's
  logits.
- All layers x all positions x vocabulary in float32 is gigabytes for a 7B model; rows are processed in chunks
  sized by a byte budget, and only the top-k or the requested targets are kept, so peak extra memory does not
  grow with ``layers x positions`` (the chunking is shared by every lens: :class:`~vlm_lens.tracing.lens.Lens`).

Example:
    >>> lens = LogitLens(m.adapter)                          # doctest: +SKIP
    >>> probs, ids = lens.topk(t.hidden[:, -1:], k=4)        # [layer, pos, k] each  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from ..core.checks import is_integer
from ..core.errors import VlmLensError
from ..models.base import Adapter
from .lens import CHUNK_BYTES, Lens

if TYPE_CHECKING:
    from .loading import LensModel

__all__ = ["CHUNK_BYTES", "LogitLens", "lens_differences", "lens_kind", "lens_signature", "resolve_lens",
           "target_token_ids"]


class LogitLens(Lens):
    """Decode hidden states through the model's final norm and output head (the same for every layer).

    Args:
        adapter: The family adapter (gives ``final_norm`` and ``unembed``).
        chunk_bytes: Budget for one chunk of float32 logits.
    """

    name = "logit lens"
    kind = "logit"
    layer_dependent = False

    def __init__(self, adapter: Adapter, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.adapter = adapter
        self.chunk_bytes = chunk_bytes
        weight = next(adapter.output_head.parameters())
        self.device, self.dtype = weight.device, weight.dtype

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """``[..., d_model]`` raw hidden states -> ``[..., vocab]`` float32 logits (no chunking: small inputs).
        ``layer`` is accepted for the :class:`~vlm_lens.tracing.lens.Lens` interface; every layer reads alike."""
        normed = self.adapter.final_norm(hidden.to(device=self.device, dtype=self.dtype))
        return self.adapter.unembed(normed).float()


def resolve_lens(lens: Any, model: "LensModel", layers: Sequence[int] | None = None, *,
                 argument: str = "lens") -> Lens:
    """The lens a reader uses: the logit lens of ``model`` for None (or ``"logit"``), else ``lens`` itself once
    :meth:`Lens.check` has accepted it for ``model`` and ``layers``.

    Raises:
        VlmLensError: ``lens`` is not a lens, belongs to another model, or cannot read ``layers``.

    Example:
        >>> resolve_lens(vl.TunedLens.load(folder, m), m, [0, 1]).name         # doctest: +SKIP
        'tuned lens'
    """
    if lens is None or (isinstance(lens, str) and lens == "logit"):
        return LogitLens(model.adapter)
    if not isinstance(lens, Lens):
        raise VlmLensError(f"{argument}={lens!r}: expected None (the logit lens) or a lens object such as "
                           "vl.TunedLens.load(folder, model) or vl.TunedLens.fit(model, dataset); got "
                           f"{type(lens).__name__}.")
    lens.check(model, layers, argument=argument)
    return lens


def lens_kind(lens: Any) -> str:
    """``"logit"`` for None, else the lens's :attr:`Lens.kind` (what runs record and compare)."""
    return "logit" if lens is None or lens == "logit" else str(getattr(lens, "kind", type(lens).__name__))


def target_token_ids(tokenizer, targets: Sequence[str | int]) -> list[int]:
    """Map target words to single token ids, as the word is tokenized inside a sentence.

    A word is tokenized after the context ``"is"`` (``"is good"`` minus ``"is"``), which gives the in-sentence
    form for every tokenizer family (SentencePiece ``▁good``, byte-level BPE ``Ġgood``, word-level ``good``). For
    LLaMA this reproduces the ids the IQA literature uses (e.g. Q-Align's good = 1781). Integers pass through.

    Raises:
        VlmLensError: A word does not become exactly one known token; the message shows how each such word was
            tokenized, so that the caller can pick a token id instead.
    """
    ids, problems = [], []
    unk = getattr(tokenizer, "unk_token_id", None)
    base = tokenizer.encode("is", add_special_tokens=False)
    for target in targets:
        if is_integer(target):
            ids.append(int(target))
            continue
        if not isinstance(target, str) or not target.strip():
            problems.append(f"{target!r}: not a non-empty string or a token id")
            continue
        full = tokenizer.encode("is " + target.strip(), add_special_tokens=False)
        piece = full[len(base):] if full[:len(base)] == base else tokenizer.encode(target, add_special_tokens=False)
        if len(piece) != 1 or (unk is not None and piece[0] == unk):
            shown = tokenizer.convert_ids_to_tokens(piece)
            problems.append(f"{target!r} -> {shown} (ids {piece})")
        else:
            ids.append(piece[0])
    if problems:
        raise VlmLensError("target words must each be exactly one known token; these are not: "
                           + "; ".join(problems) + ". Pass a token id instead, or a word the vocabulary holds.")
    return ids


#: Values sampled from the output head and from the final norm by :func:`lens_signature`.
SIGNATURE_VALUES = 32
#: Relative tolerance of :func:`lens_differences`: a bfloat16 copy of float32 weights differs by at most 2**-8.
SIGNATURE_RTOL = 5e-3


def lens_signature(adapter: Adapter) -> dict[str, Any]:
    """What the logit lens decodes with, in a few numbers: the vocabulary and model sizes, the number of decoder
    layers, and :data:`SIGNATURE_VALUES` evenly spaced values of the output head and of the final norm.

    A trace records it (``meta["lens_check"]``) so that a trace read back with another model is recognised: the
    lens of a saved trace is only right with the final norm and output head it was recorded with.

    Example:
        >>> sig = lens_signature(m.adapter)                     # doctest: +SKIP
        >>> sig["vocab"], sig["d_model"], len(sig["head"])       # doctest: +SKIP
    """
    head = adapter.output_head.weight
    norm = getattr(adapter.final_norm, "weight", None)
    return {"vocab": int(head.shape[0]), "d_model": int(head.shape[-1]), "n_layers": int(adapter.n_layers),
            "head": _sampled(head), "norm": _sampled(norm)}


def lens_differences(stored: dict[str, Any], adapter: Adapter) -> list[str]:
    """How the model behind ``adapter`` differs from a :func:`lens_signature` recorded earlier (empty: the same
    final norm and output head, up to a change of floating dtype)."""
    now = lens_signature(adapter)
    out = [f"{key}: {stored.get(key)} -> {now[key]}" for key in ("vocab", "d_model", "n_layers")
           if stored.get(key) != now[key]]
    for key, what in (("head", "output head"), ("norm", "final norm")):
        old, new = stored.get(key) or [], now[key]
        if old and new and (len(old) != len(new) or not torch.allclose(
                torch.tensor(old, dtype=torch.float64), torch.tensor(new, dtype=torch.float64),
                rtol=SIGNATURE_RTOL, atol=1e-6)):
            out.append(f"{what} weights differ")
    return out


def _sampled(weight: torch.Tensor | None) -> list[float]:
    if weight is None or weight.device.type == "meta" or not weight.numel():
        return []
    flat = weight.detach().reshape(-1)
    index = torch.linspace(0, flat.numel() - 1, min(SIGNATURE_VALUES, flat.numel())).long().to(flat.device)
    return [float(v) for v in flat[index].float().cpu()]
