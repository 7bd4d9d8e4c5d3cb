"""The adapter registry: ``config.model_type`` -> the adapter class that knows that family.

Adding a family is one file in this folder with an :class:`~vlm_lens.models.base.Adapter` subclass, and one
line below. Nothing is discovered by import magic.

Example:
    >>> from vlm_lens.models import supported_model_types
    >>> "llava" in supported_model_types()
    True
"""

from __future__ import annotations

from typing import Any

from ..core.errors import UnsupportedModelError
from ..core.spans import GridBlock, Span
from .base import Adapter, Encoded
from .gemma3 import Gemma3Adapter
from .generic import GenericAdapter, missing_from_config
from .idefics3 import Idefics3Adapter
from .llava import LlavaAdapter, LlavaNextAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .mplug_owl2 import MPLUGOwl2Adapter
from .paligemma import PaliGemmaAdapter
from .qwen2_vl import Qwen2VLAdapter

__all__ = ["Adapter", "Encoded", "GridBlock", "Span", "adapter_class", "register", "supported_model_types"]

_REGISTRY: dict[str, type[Adapter]] = {}


def register(adapter: type[Adapter]) -> type[Adapter]:
    """Register ``adapter`` for each of its ``model_types`` (usable as a class decorator)."""
    for model_type in adapter.model_types:
        _REGISTRY[model_type] = adapter
    return adapter


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def adapter_class(model_type: str, config: Any = None) -> type[Adapter]:
    """The adapter registered for ``model_type``, or an error that lists the supported ones.

    Given the checkpoint's ``config`` (a ``config.json`` mapping or a config object), an unknown ``model_type``
    whose config has an image token id gets :class:`~vlm_lens.models.generic.GenericAdapter` instead, which checks
    the rest of the common layout on the loaded model and warns about what it guessed.
    """
    try:
        return _REGISTRY[model_type]
    except KeyError:
        pass
    missing = missing_from_config(config) if config is not None else None
    if config is not None and missing is None:
        return GenericAdapter
    generic = f" The generic adapter does not apply either: it needs {missing}." if missing else ""
    raise UnsupportedModelError(
        f"model_type={model_type!r} is not a family vlm_lens supports (supported: "
        f"{', '.join(supported_model_types())}).{generic} To add one, subclass vlm_lens.models.Adapter in a file "
        "of its own and pass it to vlm_lens.models.register; docs/adding_a_family.md walks through it.")


for _adapter in (LlavaAdapter, LlavaNextAdapter, LlavaOnevisionAdapter, MPLUGOwl2Adapter, Qwen2VLAdapter,
                 Idefics3Adapter, PaliGemmaAdapter, Gemma3Adapter):
    register(_adapter)
