"""The adapter registry: ``config.model_type`` -> the adapter class that knows that family.

Adding a family is one file in this folder with an :class:`~vlm_lens.models.base.Adapter` subclass, and one
line below. Nothing is discovered by import magic.

Example:
    >>> from vlm_lens.models import supported_model_types
    >>> "llava" in supported_model_types()
    True
"""

from __future__ import annotations

from ..errors import UnsupportedModelError
from .base import Adapter, Encoded, GridBlock, Span
from .llava import LlavaAdapter, LlavaNextAdapter
from .mplug_owl2 import MPLUGOwl2Adapter

__all__ = ["Adapter", "Encoded", "GridBlock", "Span", "adapter_class", "register", "supported_model_types"]

_REGISTRY: dict[str, type[Adapter]] = {}


def register(adapter: type[Adapter]) -> type[Adapter]:
    """Register ``adapter`` for each of its ``model_types`` (usable as a class decorator)."""
    for model_type in adapter.model_types:
        _REGISTRY[model_type] = adapter
    return adapter


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def adapter_class(model_type: str) -> type[Adapter]:
    """The adapter registered for ``model_type``, or an error that lists the supported ones."""
    try:
        return _REGISTRY[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model_type={model_type!r} is not a family vlm_lens supports (supported: "
            f"{', '.join(supported_model_types())}). To add one, subclass vlm_lens.models.Adapter in a file "
            "of its own and pass it to vlm_lens.models.register; docs/adding_a_family.md walks through it.") from None


for _adapter in (LlavaAdapter, LlavaNextAdapter, MPLUGOwl2Adapter):
    register(_adapter)
