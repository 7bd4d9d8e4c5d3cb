"""The consistency checks of a :class:`~vlm_lens.tracing.record.Trace`, and of a saved trace read back.

Why a module of its own: a saved trace is a folder of three files anyone can edit, copy or mix up, and the logit
lens decodes whatever it is given. A shape check alone lets through a reversed ``layers`` list, a prompt length
past the end, token ids outside the vocabulary, or a model other than the one the trace was recorded with — each
a silent wrong reading. These checks catch them, and a damaged file is named
(:class:`~vlm_lens.core.errors.DamagedFileError`) instead of escaping as a parser's exception.

Example:
    >>> back = vl.Trace.load("trace/", model=m)    # refused if m is not the model of the trace  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from safetensors.torch import load_file

from ..core.checks import is_integer
from ..core.errors import DamagedFileError, VlmLensError
from ..core.spans import Span
from .loading import LensModel
from .logit_lens import lens_differences

__all__ = ["FORMAT_VERSION", "check_model", "order_problems", "read_saved"]

#: The version of the saved-trace folder layout.
FORMAT_VERSION = 1


def order_problems(trace: Any, n_pos: int) -> list[str]:
    """What a saved trace could get wrong without a shape changing: index lists out of order, a prompt length
    that does not separate prompt from response, token ids outside the vocabulary, spans outside the sequence."""
    problems = []
    for name in ("layers", "attention_layers"):
        values = getattr(trace, name)
        if not all(is_integer(v) and v >= 0 for v in values) or list(values) != sorted(set(values)):
            problems.append(f"{name} {list(values)[:12]} must be increasing indices >= 0")
    if not is_integer(trace.prompt_length) or not 1 <= trace.prompt_length <= n_pos:
        problems.append(f"prompt_length {trace.prompt_length!r} must be an integer in [1, {n_pos}]")
    elif "segment" in trace.tokens and (
            (trace.tokens["segment"].iloc[trace.prompt_length:] != "response").any()
            or (trace.tokens["segment"].iloc[:trace.prompt_length] == "response").any()):
        problems.append(f"prompt_length {trace.prompt_length} must be where the response segment starts")
    if "pos" in trace.tokens and trace.tokens["pos"].tolist() != list(range(n_pos)):
        problems.append(f"tokens.pos must be 0..{n_pos - 1}")
    if "id" in trace.tokens and trace.logits.ndim == 2 and n_pos:
        ids = pd.to_numeric(trace.tokens["id"], errors="coerce")
        text = ids[trace.tokens.get("segment", pd.Series(index=ids.index)) != "image"]  # image ids: placeholders
        if ids.isna().any() or (ids % 1 != 0).any() or (len(text) and (text.min() < 0 or text.max() >= trace.logits
                                                                        .shape[1])):
            problems.append(f"token ids must be integers, in [0, vocab={trace.logits.shape[1]}) outside images")
    if len(trace.query_positions) and (int(trace.query_positions.min()) < 0
                                       or int(trace.query_positions.max()) >= n_pos):
        problems.append(f"query_positions outside [0, {n_pos})")
    bad = [name for name, span in trace.spans.items() if not 0 <= span.start <= span.stop <= n_pos]
    if bad:
        problems.append(f"spans {bad} outside [0, {n_pos}]")
    elif is_integer(trace.prompt_length) and 1 <= trace.prompt_length <= n_pos:
        problems += _span_problems(trace, n_pos)
    floats = {"hidden": trace.hidden, "logits": trace.logits, "attention": trace.attention}
    problems += [f"{name} must hold floating-point values, not {value.dtype}" for name, value in floats.items()
                 if value is not None and not value.is_floating_point()]
    if not isinstance(trace.meta, dict):
        problems.append(f"meta must be a dict, not {type(trace.meta).__name__}")
    return problems


def _span_problems(trace: Any, n_pos: int) -> list[str]:
    """Spans that disagree with the prompt length: the prompt span is ``[0, prompt_length)``, the response span
    the positions after it. (An image span may hold marker tokens between its tiles, so it is not compared with the
    image segment.)"""
    problems = []
    def shown(span: Any) -> str:
        return "missing" if span is None else f"[{span.start}, {span.stop})"

    prompt = trace.spans.get("prompt")
    if prompt is None or (prompt.start, prompt.stop) != (0, trace.prompt_length):
        problems.append(f"the prompt span ({shown(prompt)}) must be [0, prompt_length={trace.prompt_length})")
    response = trace.spans.get("response")
    if trace.prompt_length < n_pos and (response is None or (response.start, response.stop) != (
            trace.prompt_length, n_pos)):
        problems.append(f"the response span ({shown(response)}) must be [prompt_length={trace.prompt_length}, "
                        f"{n_pos})")
    return problems


def read_saved(cls: type, folder: Path) -> Any:
    """The trace in ``folder``, each file read with its own error (which file, and what is wrong with it)."""
    def damaged(name: str, what: str) -> DamagedFileError:
        return DamagedFileError(f"{str(folder / name)!r} of the saved trace {str(folder)!r} is damaged: {what}. Save "
                                "the trace again (vl.trace(...).save(path)).", str(folder / name))

    try:
        info = json.loads((folder / "trace.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise damaged("trace.json", f"not readable JSON ({err})") from None
    if not isinstance(info, dict):
        raise damaged("trace.json", f"expected a JSON object, got {type(info).__name__}")
    if info.get("format_version") != FORMAT_VERSION:
        raise VlmLensError(f"{folder}: trace format {info.get('format_version')} is not {FORMAT_VERSION}; "
                           "re-create it with this version of vlm_lens.")
    try:
        tensors = load_file(str(folder / "tensors.safetensors"))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for every kind of damage
        raise damaged("tensors.safetensors", f"not a readable safetensors file ({type(err).__name__}: {err})") from None
    try:
        tokens = pd.read_parquet(folder / "tokens.parquet")
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise damaged("tokens.parquet", f"not a readable parquet file ({type(err).__name__}: {err})") from None
    absent = [k for k in ("hidden", "positions", "logits", "query_positions") if k not in tensors]
    if absent:
        raise damaged("tensors.safetensors", f"the tensors {absent} are missing")
    fields = {"layers": list, "attention_layers": list, "prompt_length": int, "spans": dict, "meta": dict}
    wrong = [f"{k} ({type(info.get(k)).__name__}, expected {t.__name__})" for k, t in fields.items()
             if not isinstance(info.get(k), t) or isinstance(info.get(k), bool)]
    if wrong:
        raise damaged("trace.json", f"wrong or missing fields: {', '.join(wrong)}")
    try:
        spans = {str(k): Span.from_dict(v) for k, v in info["spans"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise damaged("trace.json", f"a span is not {{start, stop, image_index, grid, layout}} ({err!r})") from None
    try:
        return cls(tokens=tokens, spans=spans, hidden=tensors["hidden"], layers=info["layers"],
                   positions=tensors["positions"], logits=tensors["logits"], query_positions=tensors["query_positions"],
                   attention=tensors.get("attention"), attention_layers=info["attention_layers"],
                   prompt_length=info["prompt_length"], meta=info["meta"])
    except VlmLensError as err:
        raise DamagedFileError(f"the saved trace {str(folder)!r} contradicts itself: {err}. Its files were changed or "
                               "mixed with another trace's; save the trace again.", str(folder)) from None


def check_model(trace: Any, model: LensModel, folder: Path) -> None:
    """Refuse a model whose lens would decode the trace's hidden states with another model's norm and head."""
    adapter = model.adapter
    head = adapter.output_head.weight
    sizes = (("d_model", trace.hidden.shape[-1], head.shape[-1]), ("vocab", trace.logits.shape[-1], head.shape[0]))
    differences = [f"{what}: {a} -> {b}" for what, a, b in sizes if a != b]
    if trace.layers and max(trace.layers) > adapter.n_layers:
        differences.append(f"layers: hidden index {max(trace.layers)} > the model's {adapter.n_layers} layers")
    stored = trace.meta.get("lens_check")
    if isinstance(stored, dict) and not differences:  # traces saved before it was recorded: the shapes above
        differences = lens_differences(stored, adapter)
    if differences:
        raise VlmLensError(f"model={model.name or type(model.model).__name__!r} is not the model the trace in "
                           f"{str(folder)!r} was recorded with ({trace.meta.get('model')!r}): "
                           f"{'; '.join(differences)}. The lens would decode these hidden states with another "
                           "model's final norm and output head. Pass the model the trace was made with, or "
                           "model=None to read the tensors alone.")
