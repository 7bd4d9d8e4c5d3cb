"""Refusing a checkpoint whose files are damaged or whose weights do not match its config.

Why a module of its own: ``from_pretrained`` loads a checkpoint whose config asks for 10 decoder layers over 8
layers of weights, or whose weights lack ``lm_head``, and fills the gaps with random weights; the only sign is a
report on stderr. For an interpretability tool that is the worst outcome: the traced model answers, and its logit
lens reads random layers. So every load is checked here, and each problem raises
:class:`~vlm_lens.core.errors.CheckpointError` naming the file or the keys:

- :func:`check_weight_files`, before anything is loaded: every ``*.safetensors`` file of the folder opens (a
  truncated download or a file that is not safetensors is named, instead of a parser error about a "header"), and
  the shards an index lists are all there;
- :func:`check_loading_info`, after ``from_pretrained(..., output_loading_info=True)``: no weight missing (it would
  be random), none left unused (the config describes a model other than the one saved), none of another shape.

Example:
    >>> check_loading_info("ckpt/", {"missing_keys": {"lm_head.weight"}})   # doctest: +SKIP
    Traceback (most recent call last):
    CheckpointError: 'ckpt/': its weights do not match its config: 1 missing (would be random): lm_head.weight ...
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from safetensors import safe_open

from ..core.errors import CheckpointError

__all__ = ["check_loading_info", "check_weight_files"]

_SHOWN = 8  # keys listed per kind of problem


def check_weight_files(folder: str | Path) -> None:
    """Refuse a checkpoint folder without weights, with an index naming absent shards, or with a ``.safetensors``
    file that does not open (truncated, empty, or not safetensors)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{str(index)!r} is not a weight index (a JSON object with a 'weight_map'): "
                                  f"{err!r}. Download the checkpoint again.") from None
        absent = sorted(str(s) for s in shards if not (folder / str(s)).is_file())
        if absent:
            raise CheckpointError(f"{str(index)!r} lists {len(shards)} weight file(s), but {len(absent)} are not in "
                                  f"the folder: {absent[:_SHOWN]}. Download the missing file(s).")
    files = sorted(folder.glob("*.safetensors"))
    if not files and not any(folder.glob("*.bin")):
        raise CheckpointError(f"{str(folder)!r} has no weights: it holds config.json but no *.safetensors or *.bin "
                              "file. Download the weights into the folder, or point at the folder that holds them.")
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for every kind of damage
            raise CheckpointError(f"{str(path)!r} is damaged: it does not open as a safetensors file "
                                  f"({type(err).__name__}: {err}; {path.stat().st_size} bytes). The download was "
                                  "probably cut short: download this file again.") from None


def check_loading_info(source: str, info: dict[str, Any]) -> None:
    """Refuse a load that left weights missing (random), unused, or of another shape than the config asks for.

    Args:
        source: The checkpoint (folder or hub id), named in the message.
        info: transformers' ``output_loading_info`` (``missing_keys``, ``unexpected_keys``, ``mismatched_keys``).
    """
    problems = []
    for key, what in (("missing_keys", "missing (would be random)"), ("unexpected_keys", "unused (not in the model "
                      "its config describes)"), ("mismatched_keys", "of another shape than the config asks for")):
        keys = sorted(_names(info.get(key) or ()))
        if keys:
            problems.append(f"{len(keys)} {what}: {', '.join(keys[:_SHOWN])}{' ...' if len(keys) > _SHOWN else ''}")
    if problems:
        raise CheckpointError(f"{source!r}: its weights do not match its config.json: {'; '.join(problems)}. The "
                              "traced model would not be the saved one. Check that config.json belongs to these "
                              "weights (number of layers, sizes, tied embeddings); if you know the difference is "
                              "harmless, load the model yourself with from_pretrained and pass it to vl.wrap.")


def _names(keys: Iterable[Any]) -> list[str]:
    """Key names (mismatched keys come as ``(name, shape in file, shape in model)``)."""
    return [f"{k[0]} (file {tuple(k[1])}, model {tuple(k[2])})" if isinstance(k, tuple) else str(k) for k in keys]
