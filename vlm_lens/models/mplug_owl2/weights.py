"""Loading the official mPLUG-Owl2 weights into the port, key for key, without remote code.

The official 7B checkpoints ship as sharded ``pytorch_model-0000k-of-0000n.bin`` files with
``pytorch_model.bin.index.json``; re-saved ones as ``model.safetensors`` (optionally sharded with an index). Every
file is read as plain tensors: ``.bin`` with ``torch.load(weights_only=True)`` (no pickled code runs), safetensors
with ``safe_open``.

The check is strict, because a silently missing tensor gives a model that runs and answers nonsense: the key set
of the checkpoint must equal the port's ``state_dict`` keys, with one exception — ``*.rotary_emb.inv_freq``, a
buffer transformers 4.31 saved and the port recomputes. Anything missing or unexpected, a shape that differs, or an
index that names a shard file that is not there is an error that lists the offending keys or files.

The model is built on the meta device (no memory, no random init of 8 B parameters) and each tensor is assigned
from the file shard by shard, so loading 7B needs about one copy of the weights in memory.

Example:
    >>> model = load_model("checkpoints/q-align", dtype=torch.float16, device="cuda")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

from ...core.errors import VlmLensError
from .configuration import MPLUGOwl2Config, load_config
from .modeling import MPLUGOwl2ForCausalLM

__all__ = ["IGNORED_KEYS", "checkpoint_files", "load_model", "load_weights"]

#: Keys of official checkpoints that the port does not load.
IGNORED_KEYS = re.compile(r"(^|\.)rotary_emb\.inv_freq$")

_SINGLE = {"safetensors": "model.safetensors", "bin": "pytorch_model.bin"}
_INDEX = {"safetensors": "model.safetensors.index.json", "bin": "pytorch_model.bin.index.json"}
_SHOWN = 12  # keys listed per category in an error message


def checkpoint_files(folder: str | Path) -> tuple[str, dict[str, list[str]] | None, list[Path]]:
    """Find the weight files of ``folder``.

    Returns:
        ``(format, keys_by_file, files)``: format ``"safetensors"`` or ``"bin"`` (safetensors preferred);
        ``keys_by_file`` from the index json (None without an index); the files in load order.

    Raises:
        VlmLensError: No weights, or an index naming shards that are not in the folder.
    """
    folder = Path(folder)
    for fmt in ("safetensors", "bin"):
        index_file = folder / _INDEX[fmt]
        if index_file.exists():
            try:
                weight_map = json.loads(index_file.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise VlmLensError(f"{index_file} is not a weight index (a json with a 'weight_map'): {err}.") from None
            by_file: dict[str, list[str]] = {}
            for key, name in weight_map.items():
                by_file.setdefault(name, []).append(key)
            missing = sorted(name for name in by_file if not (folder / name).is_file())
            if missing:
                raise VlmLensError(f"{index_file.name} lists {len(by_file)} shard(s), but {len(missing)} are not in "
                                   f"{folder}: {missing}. Download the missing shard(s) (they hold "
                                   f"{sum(len(by_file[m]) for m in missing)} tensors).")
            return fmt, by_file, [folder / name for name in sorted(by_file)]
        if (folder / _SINGLE[fmt]).is_file():
            return fmt, None, [folder / _SINGLE[fmt]]
    shards = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.safetensors"))
    hint = (f" It holds {shards} but no index json ({_INDEX['bin']} or {_INDEX['safetensors']}) that says which "
            "tensors they hold." if shards else "")
    raise VlmLensError(f"{str(folder)!r} has no weights: expected {_SINGLE['safetensors']}, {_SINGLE['bin']}, or "
                       f"a sharded checkpoint with its index json.{hint}")


def _read(path: Path, fmt: str, device: torch.device | str) -> Iterator[tuple[str, torch.Tensor]]:
    if fmt == "safetensors":
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            for key in handle.keys():
                yield key, handle.get_tensor(key)
        return
    try:
        try:
            state = torch.load(path, map_location=device, weights_only=True, mmap=True)
        except RuntimeError:  # files of the pre-zip format cannot be memory-mapped
            state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means the same: not a plain tensor file
        raise VlmLensError(f"{path} could not be read as a plain tensor file with torch.load(weights_only=True) "
                           f"({type(err).__name__}: {err}).") from None
    if not isinstance(state, dict):
        raise VlmLensError(f"{path} holds a {type(state).__name__}, not a dict of tensors.")
    yield from state.items()


def _file_keys(path: Path, fmt: str) -> list[str]:
    if fmt == "safetensors":
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    return [key for key, _ in _read(path, fmt, "cpu")]


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return f"{shown}{f', ... ({len(keys) - _SHOWN} more)' if len(keys) > _SHOWN else ''}"


@torch.no_grad()
def load_weights(model: MPLUGOwl2ForCausalLM, folder: str | Path, *, dtype: torch.dtype | None = None,
                 device: torch.device | str = "cpu") -> torch.dtype:
    """Assign the checkpoint's tensors to ``model`` (typically built on the meta device), strictly.

    Example:
        >>> with torch.device("meta"):                                                    # doctest: +SKIP
        ...     model = MPLUGOwl2ForCausalLM(load_config("checkpoints/q-align"))
        >>> load_weights(model, "checkpoints/q-align", dtype=torch.float16)               # doctest: +SKIP

    Args:
        model: The port, whose ``state_dict`` keys are the official ones.
        folder: The checkpoint folder.
        dtype: Cast floating tensors to this dtype; None keeps the checkpoint's (that of ``lm_head.weight``).
        device: Where the tensors are put.

    Returns:
        The dtype the floating tensors now have.

    Raises:
        VlmLensError: Missing / unexpected keys, shape mismatches, missing shards (each listed).
    """
    fmt, by_file, files = checkpoint_files(folder)
    expected = {k: v for k, v in model.state_dict().items()}
    keys_by_file = by_file or {files[0].name: _file_keys(files[0], fmt)}
    present = {k for keys in keys_by_file.values() for k in keys if not IGNORED_KEYS.search(k)}
    missing, unexpected = sorted(set(expected) - present), sorted(present - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
        raise VlmLensError(f"{folder}: the checkpoint's keys do not match mPLUG-Owl2's ({'; '.join(parts)}). Is this "
                           "a complete mPLUG-Owl2 / Q-Instruct / Q-Align checkpoint of the size its config.json "
                           "describes? (Only *.rotary_emb.inv_freq may be left out or added.)")
    loaded: set[str] = set()
    for path in files:
        chunk, bad_shapes = {}, []
        for key, tensor in _read(path, fmt, device):
            if IGNORED_KEYS.search(key):
                continue
            if key not in expected:
                raise VlmLensError(f"{path.name} holds {key!r}, which its index does not list; the checkpoint is "
                                   "inconsistent (re-download it).")
            if tuple(tensor.shape) != tuple(expected[key].shape):
                bad_shapes.append(f"{key}: file {tuple(tensor.shape)}, model {tuple(expected[key].shape)}")
                continue
            if dtype is None and key == "lm_head.weight":
                dtype = tensor.dtype
            chunk[key] = tensor
        if bad_shapes:
            raise VlmLensError(f"{path.name}: shapes differ from what config.json describes: {_listing(bad_shapes)}.")
        if dtype is None:  # lm_head is in a later shard: decide from this one's first floating tensor
            dtype = next((t.dtype for t in chunk.values() if t.is_floating_point()), None)
        chunk = {k: t.to(dtype) if t.is_floating_point() and dtype is not None else t for k, t in chunk.items()}
        model.load_state_dict(chunk, strict=False, assign=True)
        loaded.update(chunk)
    absent = sorted(set(expected) - loaded)
    if absent:
        raise VlmLensError(f"{folder}: the index lists tensors that its shards do not hold: {_listing(absent)}.")
    return dtype or torch.float32


def load_model(folder: str | Path, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
               attn_implementation: str = "sdpa") -> MPLUGOwl2ForCausalLM:
    """Build the port from an official checkpoint folder (config.json + weights [+ generation_config.json]).

    Example:
        >>> model = load_model("checkpoints/q-align", dtype=torch.float16, device="cuda")   # doctest: +SKIP

    Args:
        folder: The checkpoint folder.
        dtype: Weights dtype; None keeps the checkpoint's.
        device: Where to load (default CPU).
        attn_implementation: The decoder's attention (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``...).

    Returns:
        The model in eval mode.
    """
    from transformers import GenerationConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    folder = Path(folder)
    config: MPLUGOwl2Config = load_config(folder)
    config._attn_implementation_internal = attn_implementation
    device = torch.device(device or "cpu")
    with torch.device("meta"):
        model = MPLUGOwl2ForCausalLM(config)
    final_dtype = load_weights(model, folder, dtype=dtype, device=device)
    model.model.rotary_emb = LlamaRotaryEmbedding(config).to(device)  # non-persistent buffer: computed, not loaded
    still_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if still_meta:
        raise RuntimeError(f"tensors left unloaded on the meta device: {still_meta}")
    config.dtype = final_dtype
    if (folder / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model.eval()
