"""The generic adapter: a best-effort guess for image-text-to-text models of a family vlm_lens does not know.

Most transformers VLMs share one layout, and where a checkpoint follows it, vlm_lens can trace it without an
adapter of its own::

    <Family>ForConditionalGeneration
    ├── model                       (or the top level)
    │   └── language_model          a decoder (``get_decoder()``, ``language_model`` or ``text_model``) with
    │       ├── layers              an ``nn.ModuleList`` of decoder layers, each with ``self_attn``
    │       └── norm                the final norm
    ├── lm_head                     ``get_output_embeddings()``
    └── config.image_token_id       (or ``image_token_index``): the id the processor repeats per image embedding

What it cannot know, it does not pretend to: image spans are the runs of the image token (one per image, split by
the counts when images touch), without a grid; positions count real tokens as for LLaMA-style decoders; the
output head is applied without soft-capping. Hence a warning naming the family and each guessed piece. A family
with its own position scheme (M-RoPE), masking (bidirectional prefixes) or logit capping needs an adapter of its
own; docs/adding_a_family.md shows how.

Example:
    >>> import vlm_lens as vl                                    # doctest: +SKIP
    >>> m = vl.load("checkpoints/vip-llava-7b-hf")   # warns: ... using the generic adapter ...  # doctest: +SKIP
    >>> m.family                                                 # doctest: +SKIP
    'generic'
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

from torch import nn

from ..core.errors import UnsupportedModelError
from ..core.spans import Span
from .base import Adapter, runs_of

__all__ = ["GenericAdapter", "missing_from_config"]

#: Where the decoder stack is looked for, after ``model.get_decoder()``.
DECODER_PATHS = ("model.language_model", "language_model", "model.text_model", "model.decoder", "model")
#: Names of the final norm on the decoder stack.
NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f")
#: Config keys of the image token id.
IMAGE_TOKEN_KEYS = ("image_token_id", "image_token_index")


def missing_from_config(config: Mapping[str, Any] | Any) -> str | None:
    """The piece the generic adapter cannot find in a config (a ``config.json`` mapping or a config object), so that
    a checkpoint it cannot trace fails before any weights are read; None when the config has what it needs."""
    get = config.get if isinstance(config, Mapping) else (lambda key: getattr(config, key, None))
    if not any(isinstance(get(key), int) and get(key) >= 0 for key in IMAGE_TOKEN_KEYS):
        return f"an image token id in the config ({' / '.join(IMAGE_TOKEN_KEYS)})"
    return None


class GenericAdapter(Adapter):
    """Fallback for ``model_type`` values without an adapter, when the model follows the common layout."""

    family = "generic"
    model_types = ()

    def __init__(self, model: nn.Module, processor: Any | None) -> None:
        self._decoder, self._decoder_path = _find_decoder(model)
        self._norm_name = next((n for n in NORM_NAMES if isinstance(getattr(self._decoder, n, None), nn.Module)),
                               None)
        if self._norm_name is None:
            raise _missing(model, f"a final norm on the decoder at `{self._decoder_path}` (looked for "
                                  f"{', '.join(NORM_NAMES)})")
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        head = head if head is not None else getattr(model, "lm_head", None)
        if not isinstance(getattr(head, "weight", None), nn.Parameter):
            raise _missing(model, "an output head (`get_output_embeddings()` or `lm_head` with a weight)")
        self._head = head
        problem = missing_from_config(model.config)
        if problem:
            raise _missing(model, problem)
        super().__init__(model, processor)
        model_type = model.config.model_type
        warnings.warn(
            f"model_type={model_type!r} has no vlm_lens adapter; using the generic adapter with guessed pieces: "
            f"decoder `{self._decoder_path}` ({len(self.layers)} x {type(self.layers[0]).__name__}), final norm "
            f"`{self._decoder_path}.{self._norm_name}`, output head {type(head).__name__}, image token id "
            f"{self.image_token_id}. Image spans carry no grid, positions count real tokens and logits are not "
            "soft-capped; check the results against the model, or add an adapter (docs/adding_a_family.md).",
            UserWarning, stacklevel=3)

    @property
    def language_model(self) -> nn.Module:
        return self._decoder

    @property
    def final_norm(self) -> nn.Module:
        return getattr(self._decoder, self._norm_name)

    @property
    def output_head(self) -> nn.Module:
        return self._head

    @property
    def text_config(self) -> Any:
        attention = self.attention_module(self.layers[0])
        return getattr(attention, "config", None) or self.model.config.get_text_config()

    @property
    def image_token_id(self) -> int:
        config = self.model.config
        return int(next(getattr(config, k) for k in IMAGE_TOKEN_KEYS if isinstance(getattr(config, k, None), int)))

    def image_spans(self, ids: list[int], model_inputs: dict[str, Any], sample: int, images: Sequence) -> list[Span]:
        """Runs of the image token, one per image; adjacent images are split evenly when the run holds them all."""
        runs = runs_of(ids, self.image_token_id)
        n = len(images[sample])
        if len(runs) == 1 and n > 1:
            start, stop = runs[0]
            if (stop - start) % n == 0:
                size = (stop - start) // n
                runs = [(start + k * size, start + (k + 1) * size) for k in range(n)]
        if len(runs) != n:
            raise UnsupportedModelError(f"{len(runs)} runs of the image token for {n} image(s) in sample {sample}; "
                                        "the generic adapter cannot tell which positions belong to which image. "
                                        "This family needs an adapter of its own (docs/adding_a_family.md).")
        return [Span(a, b, k) for k, (a, b) in enumerate(runs)]


def _find_decoder(model: nn.Module) -> tuple[nn.Module, str]:
    candidates: list[tuple[str, Any]] = []
    if hasattr(model, "get_decoder"):
        try:
            candidates.append(("get_decoder()", model.get_decoder()))
        except (AttributeError, NotImplementedError):
            pass
    for path in DECODER_PATHS:
        module = model
        for name in path.split("."):
            module = getattr(module, name, None)
        candidates.append((path, module))
    names = {id(module): name for name, module in model.named_modules()}
    for path, module in candidates:
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers):
            path = names.get(id(module), path) or path
            if not all(hasattr(layer, "self_attn") for layer in layers):
                raise _missing(model, f"`self_attn` on the decoder layers at `{path}.layers`")
            return module, path
    raise _missing(model, "a decoder stack: an nn.ModuleList `layers` under "
                          + ", ".join(f"`{p}`" for p, _ in candidates))


def _missing(model: nn.Module, piece: str) -> UnsupportedModelError:
    model_type = getattr(model.config, "model_type", "?")
    return UnsupportedModelError(
        f"model_type={model_type!r} ({type(model).__name__}) has no vlm_lens adapter, and the generic adapter could "
        f"not find {piece}. Write an adapter for this family: docs/adding_a_family.md walks through it.")
