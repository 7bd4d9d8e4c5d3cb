"""The arguments of :func:`~vlm_lens.tracing.tracer.trace` checked and resolved, before anything runs on the model.

Why a module of its own: every check here raises a :class:`~vlm_lens.core.errors.VlmLensError` that names the
argument, what was expected and what was given, and none of them touches the model, so a refused call leaves the
model exactly as it was; the tracer keeps the steps that do run it.

Example:
    >>> check_indices([0, -1], 5, "keep.layers", "hidden-state indices 0..n_layers")
    [0, 4]
    >>> resolve_indices([-1], 7, "keep.query_positions")
    [6]
"""

from __future__ import annotations

from typing import Any, Sequence

from ..core.errors import VlmLensError
from ..core.images import load_image
from ..models.base import Encoded

__all__ = ["as_list", "attention_layers", "check_indices", "check_length", "default_queries", "describe_image",
           "images_of", "resolve_indices"]


def check_indices(values: Sequence[int] | None, size: int, name: str, meaning: str) -> list[int]:
    """``values`` (None: all of ``range(size)``) as sorted, distinct indices; negative ones count from the end."""
    if values is None:
        return list(range(size))
    out = []
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or not -size <= v < size:
            raise VlmLensError(f"{name}: {v!r} is not valid; expected {meaning} (there are {size}; negative "
                               "values count from the end).")
        out.append(v % size)
    if not out:
        raise VlmLensError(f"{name} is empty; pass None for all.")
    return sorted(set(out))


def attention_layers(attention: bool | Sequence[int], n_layers: int) -> list[int]:
    """The decoder layers whose attention rows ``Keep(attention=...)`` asks for."""
    if attention is True:
        return list(range(n_layers))
    if attention is False or attention is None:
        return []
    return check_indices(attention, n_layers, "keep.attention", "decoder layer indices 0..n_layers-1")


def resolve_indices(values: Sequence[int], length: int, name: str) -> list[int]:
    """Positions of a sequence of ``length`` (negative ones count from the end), in the order given."""
    out = []
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or not -length <= v < length:
            raise VlmLensError(f"{name}: {v!r} is out of range for a sequence of {length} positions "
                               f"(valid: {-length}..{length - 1}).")
        out.append(v % length)
    if not out:
        raise VlmLensError(f"{name} is empty; pass None for the default.")
    return out


def default_queries(prompt_length: int, length: int) -> list[int]:
    """The query positions kept by default: the last prompt position and every answer position."""
    return list(range(prompt_length - 1, length))


def check_length(adapter: Any, encoded: Encoded, new_tokens: int) -> None:
    """Refuse prompts that, with the tokens to generate, exceed the model's context."""
    limit = adapter.max_positions
    if limit is None:
        return
    for i, n in enumerate(encoded.lengths):
        if n + new_tokens > limit:
            extra = f" + {new_tokens} to generate" if new_tokens else ""
            raise VlmLensError(f"prompt {i} is {n} positions long (image tokens included){extra}, more than the "
                               f"model's context of {limit}. Shorten the prompt or generate fewer tokens.")


def images_of(entry: Any, sample: int) -> list:
    """The images of one sample (none, one, or a list), each read and checked."""
    return [load_image(image, argument=f"images[{sample}]" + (f"[{k}]" if isinstance(entry, (list, tuple)) else ""))
            for k, image in enumerate(as_list(entry))]


def as_list(entry: Any) -> list:
    if entry is None:
        return []
    return list(entry) if isinstance(entry, (list, tuple)) else [entry]


def describe_image(image: Any) -> str:
    return str(image) if isinstance(image, str) or hasattr(image, "__fspath__") else type(image).__name__
