"""What identifies a model's weights: a cheap digest that any retraining changes.

Why a module of its own, in this layer: two things must recognise "the same model" without comparing gigabytes — a
run folder (``vlm_lens.runs``), which refuses to mix results of two models, and a tuned lens
(:mod:`vlm_lens.tracing.tuned_lens`), which refuses to read the residual stream of a model it was not fitted on.
Both use :func:`model_fingerprint`; the lens compares only the parts that describe the weights
(:func:`weights_fingerprint`), so that a checkpoint moved to another folder is still the same model.

Example:
    >>> import tempfile, vlm_lens as vl
    >>> from vlm_lens.testing import tiny_llava
    >>> m = vl.load(tiny_llava(tempfile.mkdtemp()))
    >>> sorted(weights_fingerprint(m.model))
    ['class', 'config_sha256', 'weights_digest']
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from .loading import LensModel

__all__ = ["model_fingerprint", "weights_fingerprint"]

#: Config entries that say where or how a model was loaded, not what it computes.
_VOLATILE = ("_name_or_path", "transformers_version", "_commit_hash", "_attn_implementation_autoset",
             "_attn_implementation", "_attn_implementation_internal")


def weights_fingerprint(module: nn.Module) -> dict[str, str]:
    """Class, config digest (paths and versions aside) and a digest of every parameter's name, shape, dtype and 64
    evenly spaced values (cheap even for 7B models, and any retraining changes it)."""
    config = module.config.to_dict()
    for volatile in _VOLATILE:
        config.pop(volatile, None)
    digest = hashlib.sha256()
    for name, param in sorted(module.named_parameters(), key=lambda item: item[0]):
        digest.update(f"{name}{tuple(param.shape)}{param.dtype}".encode())
        flat = param.detach().reshape(-1)
        if flat.numel() and flat.device.type != "meta":
            index = torch.linspace(0, flat.numel() - 1, min(64, flat.numel())).long().to(flat.device)
            digest.update(flat[index].double().cpu().numpy().tobytes())
    return {"class": type(module).__name__,
            "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest(),
            "weights_digest": digest.hexdigest()}


def model_fingerprint(model: "LensModel") -> dict[str, Any]:
    """What identifies a loaded model: its name and revision, and :func:`weights_fingerprint` of its weights."""
    hf = model.model
    weights = weights_fingerprint(hf)
    return {"name": model.name, "class": weights["class"], "revision": getattr(hf.config, "_commit_hash", None),
            "config_sha256": weights["config_sha256"], "weights_digest": weights["weights_digest"]}
