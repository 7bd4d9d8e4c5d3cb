"""``load`` and ``wrap``: a Hugging Face VLM plus the adapter that knows its family.

``load`` reads ``config.json`` first to pick the adapter, so that a checkpoint of an unsupported family fails
before gigabytes of weights are read, and so that families transformers does not ship (mPLUG-Owl2) can bring
their own loader. Remote code is never enabled on the user's behalf.

Example:
    >>> import vlm_lens as vl
    >>> from vlm_lens.testing import tiny_llava
    >>> import tempfile
    >>> path = tiny_llava(tempfile.mkdtemp())
    >>> m = vl.load(path)
    >>> m.family, m.adapter.n_layers
    ('llava', 2)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..core.errors import UnsupportedModelError, VlmLensError
from ..models import Adapter, adapter_class

__all__ = ["LensModel", "load", "register_source", "wrap"]


@dataclass
class LensModel:
    """A VLM ready to be traced.

    Attributes:
        model: The underlying Hugging Face ``nn.Module`` (eval mode).
        processor: Its processor (image processor + tokenizer).
        adapter: The family adapter (decoder layers, final norm, output head, image positions).
        name: Where the model came from (path or hub id), recorded in traces.
    """

    model: nn.Module
    processor: Any
    adapter: Adapter
    name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def trace(self, *args: Any, **kwargs: Any) -> None:
        """Removed: there is one trace verb. Call ``vl.trace(m, image, prompt, ...)``."""
        raise VlmLensError("LensModel.trace(...) was removed; call vl.trace(model, image, prompt, ...) instead (the "
                           "same arguments, with the model first).")

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return (f"LensModel(family={self.family!r}, name={self.name!r}, layers={self.adapter.n_layers}, "
                f"params={n:,}, dtype={self.dtype}, device={self.device})")


def load(path_or_name: str | Path, *, dtype: torch.dtype | str | None = None, device: str | None = None,
         device_map: Any = None, attn_implementation: str = "sdpa", trust_remote_code: bool = False,
         processor: Any = None) -> LensModel:
    """Load a VLM checkpoint (a local folder or a cached hub id) with its processor and adapter.

    Args:
        path_or_name: A folder with ``config.json`` and weights, or a hub id already in the local cache.
        dtype: Weights dtype (``torch.bfloat16``, ``"float16"``...); default: as stored.
        device: Device to move the model to (``"cuda"``, ``"cpu"``); ignored with ``device_map``.
        device_map: Passed to ``from_pretrained`` (e.g. ``"auto"`` to spread a large model over GPUs).
        attn_implementation: The attention the model runs with (``"sdpa"``, ``"flash_attention_2"``,
            ``"eager"``); attention rows are exact with any of them.
        trust_remote_code: Passed through; never turned on by vlm_lens.
        processor: Use this processor instead of loading one from the checkpoint.

    Returns:
        A :class:`LensModel` in eval mode.

    Raises:
        UnsupportedModelError: The family is unknown (the message lists the supported ones).

    Example:
        >>> m = vl.load("checkpoints/llava-1.5-7b-hf", dtype="bfloat16", device="cuda")  # doctest: +SKIP
    """
    source = _resolve_source(str(path_or_name))
    model_type, config = _model_config(source)
    cls = adapter_class(model_type, config)  # unknown families with the common layout: the generic adapter
    if isinstance(dtype, str):
        dtype = _parse_dtype(dtype)
    model, loaded_processor = cls.from_pretrained(source, dtype=dtype, device_map=device_map,
                                                  attn_implementation=attn_implementation,
                                                  trust_remote_code=trust_remote_code)
    if device is not None and device_map is None:
        model = model.to(device)
    lens_model = wrap(model, processor if processor is not None else loaded_processor, name=source)
    return lens_model


def wrap(model: nn.Module, processor: Any = None, *, name: str = "") -> LensModel:
    """Wrap an already-loaded Hugging Face VLM (and its processor) for tracing.

    The model is put in eval mode; nothing else about it changes.

    Example:
        >>> m = vl.wrap(hf_model, hf_processor)  # doctest: +SKIP
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise UnsupportedModelError(f"{type(model).__name__} has no `config.model_type`; vlm_lens wraps "
                                    "Hugging Face PreTrainedModel instances.")
    adapter = adapter_class(model_type, config)(model.eval(), processor)
    return LensModel(model, processor, adapter, name=name or getattr(config, "_name_or_path", ""))


#: ``scheme -> resolver`` of named sources (``"zoo:NAME"``), registered by the layer that ships them.
_SOURCES: dict[str, Callable[[str], Path]] = {}


def register_source(scheme: str, resolver: Callable[[str], Path]) -> None:
    """Let ``vl.load("<scheme>:NAME")`` load the folder ``resolver(NAME)`` returns (the zoo registers ``zoo``).

    Example:
        >>> import vlm_lens as vl
        >>> vl.load("zoo:tiny-biqa-one-stage").family
        'llava'
    """
    _SOURCES[scheme] = resolver


def _resolve_source(source: str) -> str:
    scheme, sep, name = source.partition(":")
    if sep and scheme in _SOURCES:
        return str(_SOURCES[scheme](name))
    return source


def _model_config(source: str) -> tuple[str, Any]:
    """``(model_type, config)`` of a checkpoint, read before any weights: ``config.json`` as a mapping for a folder,
    the config object for a cached hub id."""
    path = Path(source)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.exists():
            raise VlmLensError(f"{source!r} is a folder without config.json; point load() at a checkpoint "
                               "folder (config.json + weights).")
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as err:
            raise VlmLensError(f"{config_file} is not valid JSON ({err}).") from None
        model_type = config.get("model_type") if isinstance(config, dict) else None
        if not model_type:
            raise UnsupportedModelError(f"{config_file} has no model_type; vlm_lens cannot tell the family.")
        return model_type, config
    if path.exists():
        raise VlmLensError(f"{source!r} is a file; load() takes a checkpoint folder or a hub id.")
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
        return config.model_type, config
    except Exception as err:  # noqa: BLE001 - every failure here means the same thing to the user
        raise VlmLensError(f"{source!r} is neither a local folder nor a hub id in the local cache ({err}). "
                           "Download the checkpoint to a folder and pass its path.") from None


def _parse_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.replace("torch.", ""), None)
    if not isinstance(dtype, torch.dtype):
        raise VlmLensError(f"dtype={name!r} is not a torch dtype; use e.g. 'float32', 'bfloat16', 'float16'.")
    return dtype
