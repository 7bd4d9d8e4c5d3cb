"""``load`` and ``wrap``: a Hugging Face VLM plus the adapter that knows its family.

``load`` reads ``config.json`` first to pick the adapter, so that a checkpoint of an unsupported family fails
before gigabytes of weights are read, and so that families transformers does not ship (mPLUG-Owl2) can bring
their own loader. Remote code is never enabled on the user's behalf. Arguments are checked before anything is read
(a dtype that is not floating, a device this machine lacks), and a checkpoint whose weights do not match its config
is refused instead of being filled with random weights (:mod:`vlm_lens.models.integrity`). A hub id follows the
Hugging Face convention: downloaded when it is not cached, unless ``HF_HUB_OFFLINE=1``.

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
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..core.checks import as_bool, as_device, as_dtype, as_text
from ..core.errors import UnsupportedModelError, VlmLensError
from ..models import Adapter, adapter_class, supported_model_types
from ..models.integrity import check_weight_files

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
    """Load a VLM checkpoint (a local folder, a hub id, or ``zoo:NAME``) with its processor and adapter.

    A hub id (``"org/name"``) is loaded as ``from_pretrained`` loads it: from the local Hugging Face cache, downloaded
    first (with a progress bar) when it is not there or the hub has a newer revision — unless ``HF_HUB_OFFLINE=1``
    is set, in which case only the cache is read and nothing touches the network.

    Args:
        path_or_name: A folder with ``config.json`` and weights, a hub id, or ``zoo:NAME``.
        dtype: Weights dtype (``torch.bfloat16``, ``"float16"``, ``"auto"``...); default: as stored. Floating
            dtypes only.
        device: Device to move the model to (``"cuda"``, ``"cpu"``); it must exist on this machine; ignored with
            ``device_map``.
        device_map: Passed to ``from_pretrained`` (e.g. ``"auto"`` to spread a large model over GPUs).
        attn_implementation: The attention the model runs with (``"sdpa"``, ``"flash_attention_2"``,
            ``"eager"``); attention rows are exact with any of them.
        trust_remote_code: Passed through (True or False); never turned on by vlm_lens.
        processor: Use this processor instead of loading one from the checkpoint.

    Returns:
        A :class:`LensModel` in eval mode.

    Raises:
        UnsupportedModelError: The family is unknown (the message lists the supported ones), or the checkpoint
            needs remote code that was not allowed.
        CheckpointError: A weight file is damaged, or the weights do not match the config (missing, unused or
            mis-shaped tensors) — refused instead of filled with random values.
        VlmLensError: A bad argument, a folder that is not a checkpoint, or a hub id that is neither cached nor
            downloadable.

    Example:
        >>> m = vl.load("checkpoints/llava-1.5-7b-hf", dtype="bfloat16", device="cuda")  # doctest: +SKIP
    """
    source = _resolve_source(_source_text(path_or_name))
    dtype = None if isinstance(dtype, str) and dtype.strip().lower() == "auto" else as_dtype(dtype, "dtype")
    device = as_device(device, "device")
    trust_remote_code = as_bool(trust_remote_code, "trust_remote_code")
    attn_implementation = as_text(attn_implementation, "attn_implementation", optional=False)
    model_type, config = _model_config(source, trust_remote_code)
    cls = adapter_class(model_type, config)  # unknown families with the common layout: the generic adapter
    if Path(source).is_dir():
        check_weight_files(source)
    try:
        model, loaded_processor = cls.from_pretrained(source, dtype=dtype, device_map=device_map,
                                                      attn_implementation=attn_implementation,
                                                      trust_remote_code=trust_remote_code)
    except VlmLensError:
        raise
    except (OSError, ValueError, RuntimeError, ImportError, KeyError) as err:
        raise VlmLensError(f"transformers could not load {source!r} with dtype={dtype}, device_map={device_map!r}, "
                           f"attn_implementation={attn_implementation!r} ({type(err).__name__}: "
                           f"{' '.join(str(err).split())[:400]}). Check these arguments and the checkpoint's "
                           "files.") from None
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


def _source_text(path_or_name: Any) -> str:
    if not isinstance(path_or_name, (str, os.PathLike)) or not str(path_or_name).strip():
        raise VlmLensError(f"path_or_name={path_or_name!r}: expected a checkpoint folder (str or Path), a hub id "
                           "('org/name') or 'zoo:NAME'" + (f", got {type(path_or_name).__name__}." if not isinstance(
                               path_or_name, (str, os.PathLike)) else ", got an empty string."))
    return str(path_or_name)


def _resolve_source(source: str) -> str:
    scheme, sep, name = source.partition(":")
    if sep and scheme in _SOURCES:
        return str(_SOURCES[scheme](name))
    return source


def _model_config(source: str, trust_remote_code: bool) -> tuple[str, Any]:
    """``(model_type, config)`` of a checkpoint, read before any weights: ``config.json`` as a mapping for a folder,
    the config object for a hub id."""
    path = Path(source)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.exists():
            raise VlmLensError(f"{source!r} is a folder without config.json; point load() at a checkpoint "
                               "folder (config.json + weights).")
        try:
            config = json.loads(config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise VlmLensError(f"{config_file} is not valid JSON ({err}).") from None
        model_type = config.get("model_type") if isinstance(config, dict) else None
        if not model_type:
            raise UnsupportedModelError(f"{config_file} has no model_type; vlm_lens cannot tell the family.")
        _check_known(str(model_type), config, config_file, trust_remote_code)
        return model_type, config
    if path.exists():
        raise VlmLensError(f"{source!r} is a file; load() takes a checkpoint folder or a hub id.")
    return _hub_config(source, trust_remote_code)


def _check_known(model_type: str, config: dict, config_file: Path, trust_remote_code: bool) -> None:
    """Refuse, before any weights are read, a ``model_type`` that neither vlm_lens nor transformers knows: with its
    own code (``auto_map``) only when remote code is allowed, without it never."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type in supported_model_types() or model_type in CONFIG_MAPPING or (
            trust_remote_code and "auto_map" in config):
        return
    import transformers

    if "auto_map" in config:
        raise UnsupportedModelError(f"{config_file}: model_type={model_type!r} is defined by code shipped with "
                                    "the checkpoint (auto_map), which runs only with trust_remote_code=True; vlm_lens "
                                    "never turns it on for you. Read that code, then pass trust_remote_code=True.")
    raise UnsupportedModelError(f"{config_file}: model_type={model_type!r} is not a family vlm_lens supports "
                                f"(supported: {', '.join(supported_model_types())}), nor a model type transformers "
                                f"{transformers.__version__} knows. Check the checkpoint, upgrade transformers, or add "
                                "a family (docs/adding_a_family.md).")


def _hub_config(source: str, trust_remote_code: bool) -> tuple[str, Any]:
    """The config of hub id ``source``: from the local cache, downloaded when missing unless HF_HUB_OFFLINE is set."""
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError:
        raise VlmLensError(f"{source!r} is neither a local folder nor a hub id: no such folder (relative paths are "
                           f"resolved against {Path.cwd()}), and hub ids look like 'org/name'. Check the path."
                           ) from None
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except ValueError as err:  # fetched, but transformers cannot read it (unknown type, remote code)
        raise UnsupportedModelError(f"{source!r}: transformers cannot read its config "
                                    f"({' '.join(str(err).split())[:400]}).") from None
    except Exception as err:  # noqa: BLE001 - not found, gated, no network: said with what to do
        detail = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
        if constants.HF_HUB_OFFLINE:
            raise VlmLensError(f"{source!r} is neither a local folder nor a hub id in the local cache, and "
                               "HF_HUB_OFFLINE is set, so it is not downloaded. Unset HF_HUB_OFFLINE to download it, "
                               "or pass the path of a checkpoint folder.") from None
        raise VlmLensError(f"{source!r} is not a local folder, and could not be fetched from the Hugging Face hub "
                           f"({detail}). Check the id (gated models need `hf auth login`) and the network; without "
                           "network, set HF_HUB_OFFLINE=1 to read the local cache at once.") from None
    return config.model_type, config
