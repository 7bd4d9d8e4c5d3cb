"""Plain argument values, checked one way everywhere: integers, booleans, numbers, text, dtypes, devices, folders.

Why a module of its own: "is this an integer?" was asked in a dozen places and answered a little differently in
each — numpy integers refused in one place though their value is fine, ``True`` taken for ``1`` in another, the
string ``"False"`` taken for true in a third (a silent wrong result: a DMOS set correlated with the wrong sign).
The answers here are the ones vlm_lens gives everywhere:

- numpy integers and 0-d integer torch tensors are integers (their value is what counts); booleans are not numbers;
- a boolean is ``True`` or ``False`` (numpy's too), never a string or a number;
- numbers are finite unless said otherwise;
- a dtype is a ``torch.dtype`` or its name (``"bfloat16"``, ``"torch.float16"``, ``"bf16"``);
- a device is parsed by torch and must exist on this machine (``"cuda"`` without CUDA is refused before anything
  runs, not half-way through a model load);
- a folder argument is a non-empty path (``""`` is not a quiet alias of the current folder).

Each check raises :class:`~vlm_lens.core.errors.VlmLensError` naming the argument, what was expected and what was
given, and returns the value in its plain form (``int``, ``bool``, ``float``, ``torch.dtype``, ``Path``).

Example:
    >>> import numpy as np
    >>> as_int(np.int64(3), "topk", minimum=1)
    3
    >>> try:
    ...     as_bool("False", "higher_is_better")
    ... except VlmLensError as err:
    ...     print(err)
    higher_is_better='False': expected True or False, got str. Pass the boolean itself (False), not its text.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import VlmLensError

__all__ = ["as_bool", "as_device", "as_dtype", "as_folder", "as_int", "as_number", "as_text", "as_words",
           "is_integer", "make_folder", "named", "shown"]

#: Short names of dtypes accepted besides torch's own attribute names.
DTYPE_ALIASES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
FLOATING = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a list of a million ids stays one line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...)"


def named(argument: str, value: Any) -> str:
    """``argument`` with its value, as the user wrote it: ``topk=0``, or ``Keep(dtype=torch.int8)`` for a field of a
    settings object (``argument="Keep(dtype)"``)."""
    if argument.endswith(")") and "(" in argument and "=" not in argument:
        return f"{argument[:-1]}={value})"
    return f"{argument}={value}"


def is_integer(value: Any) -> bool:
    """True for ``int``, numpy integers and 0-d integer tensors; False for booleans and everything else."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, numbers.Integral):
        return True
    return (isinstance(value, torch.Tensor) and value.ndim == 0 and value.dtype != torch.bool
            and not value.is_floating_point() and not value.is_complex())


def as_int(value: Any, argument: str, *, minimum: int | None = None, maximum: int | None = None,
           meaning: str = "an integer") -> int:
    """``value`` as an ``int`` within ``[minimum, maximum]``.

    Example:
        >>> as_int(4, "batch_size", minimum=1)
        4
    """
    bounds = _bounds(minimum, maximum)
    if not is_integer(value):
        raise VlmLensError(f"{named(argument, shown(value))}: expected {meaning}{bounds}, got "
                           f"{type(value).__name__}.")
    number = int(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise VlmLensError(f"{named(argument, number)}: expected {meaning}{bounds}.")
    return number


def as_bool(value: Any, argument: str) -> bool:
    """``value`` as a ``bool``: ``True`` / ``False`` (numpy's too), nothing else — ``"False"`` is truthy text."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    hint = f" Pass the boolean itself ({value.strip().capitalize()}), not its text." if (
        isinstance(value, str) and value.strip().lower() in ("true", "false")) else ""
    raise VlmLensError(f"{named(argument, shown(value))}: expected True or False, got {type(value).__name__}.{hint}")


def as_number(value: Any, argument: str, *, minimum: float | None = None, above: float | None = None,
              maximum: float | None = None, finite: bool = True) -> float:
    """``value`` as a finite ``float`` (ints and numpy numbers included, booleans not), within the bounds given
    (``above``: strictly greater)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise VlmLensError(f"{named(argument, shown(value))}: expected a number, got {type(value).__name__}.")
    number = float(value)
    if finite and not np.isfinite(number):
        raise VlmLensError(f"{named(argument, number)}: expected a finite number.")
    if ((minimum is not None and number < minimum) or (above is not None and not number > above)
            or (maximum is not None and number > maximum)):
        low = f"> {above}" if above is not None else (f">= {minimum}" if minimum is not None else "")
        high = f"<= {maximum}" if maximum is not None else ""
        raise VlmLensError(f"{named(argument, number)}: expected a number "
                           f"{' and '.join(b for b in (low, high) if b)}.")
    return number


def as_text(value: Any, argument: str, *, optional: bool = True) -> str | None:
    """``value`` as a ``str`` (None allowed when ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise VlmLensError(f"{named(argument, shown(value))}: expected a string{' or None' if optional else ''}, got "
                           f"{type(value).__name__}.")
    return value


def as_words(value: Any, argument: str) -> list[str]:
    """``value`` as a list of non-empty strings; one string is refused (iterated, it would be its letters).

    Example:
        >>> as_words(("good", "poor"), "levels")
        ['good', 'poor']
    """
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise VlmLensError(f"{named(argument, shown(value))}: expected a list of words, e.g. ['good', 'poor'], got "
                           f"{type(value).__name__}.")
    words = list(value)
    bad = [w for w in words if not isinstance(w, str) or not w.strip()]
    if bad:
        raise VlmLensError(f"{named(argument, shown(words))}: {shown(bad[0])} is not a word; expected non-empty "
                           "strings.")
    return words


def as_dtype(value: Any, argument: str, *, floating: bool = True) -> torch.dtype | None:
    """``value`` (a ``torch.dtype``, its name, or None) as a ``torch.dtype``; with ``floating``, one of float32,
    float16, bfloat16, float64 (an integer dtype would truncate hidden states or weights to whole numbers).

    Example:
        >>> as_dtype("bf16", "dtype")
        torch.bfloat16
    """
    if value is None:
        return None
    dtype = value
    if isinstance(value, str):
        name = value.strip().lower().removeprefix("torch.")
        dtype = DTYPE_ALIASES.get(name, getattr(torch, name, None))
    if not isinstance(dtype, torch.dtype):
        raise VlmLensError(f"{named(argument, shown(value))}: expected a torch dtype or its name, e.g. 'float32', "
                           f"'bfloat16', 'float16'; got {type(value).__name__}.")
    if floating and dtype not in FLOATING:
        raise VlmLensError(f"{named(argument, shown(value))}: expected a floating-point dtype (float32, bfloat16, "
                           f"float16, float64); {dtype} would round every value to what that type can hold.")
    return dtype


def as_device(value: Any, argument: str) -> torch.device | None:
    """``value`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, a ``torch.device`` or None) as a device that this
    machine has."""
    if value is None:
        return None
    if not isinstance(value, (str, torch.device)) and not is_integer(value):
        raise VlmLensError(f"{named(argument, shown(value))}: expected a device such as 'cpu', 'cuda' or 'cuda:1', got "
                           f"{type(value).__name__}.")
    try:
        device = torch.device(value if not is_integer(value) else int(value))
    except (RuntimeError, TypeError, ValueError):
        raise VlmLensError(f"{named(argument, shown(value))}: not a device torch knows; expected e.g. 'cpu', 'cuda', "
                           "'cuda:1' or 'mps'.") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise VlmLensError(f"{named(argument, shown(value))}: CUDA is not available on this machine (torch "
                               f"{torch.__version__}, torch.cuda.is_available() is False). Use 'cpu', or install a "
                               "CUDA build of torch on a machine with a GPU.")
        if device.index is not None and device.index >= count:
            raise VlmLensError(f"{named(argument, shown(value))}: this machine has {count} CUDA device(s), "
                               f"cuda:0..cuda:{count - 1}.")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise VlmLensError(f"{named(argument, shown(value))}: Apple's MPS backend is not available on this machine; "
                           "use 'cpu'.")
    elif device.type == "meta":
        raise VlmLensError(f"{named(argument, shown(value))}: the meta device holds shapes but no values; use 'cpu' "
                           "or a GPU.")
    return device


def as_folder(value: Any, argument: str) -> Path:
    """``value`` (a ``str`` or path) as a ``Path``; the empty string is refused (it would silently mean the current
    folder)."""
    if not isinstance(value, (str, os.PathLike)):
        raise VlmLensError(f"{named(argument, shown(value))}: expected a folder path (str or pathlib.Path), got "
                           f"{type(value).__name__}.")
    if not str(value).strip():
        raise VlmLensError(f"{named(argument, shown(value))}: expected a folder path, got an empty string (it would "
                           "mean the current folder). Name the folder, e.g. 'runs/one-stage'.")
    return Path(value)


def make_folder(value: Any, argument: str) -> Path:
    """:func:`as_folder`, then create it (parents included); a file in the way or a folder without write
    permission is refused."""
    folder = as_folder(value, argument)
    if folder.exists() and not folder.is_dir():
        raise VlmLensError(f"{named(argument, repr(str(folder)))} is a file, not a folder. Name a folder (it is "
                           "created).")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VlmLensError(f"{named(argument, repr(str(folder)))} cannot be created ({err.strerror or err}). Pass a "
                           "folder you can write to.") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise VlmLensError(f"{named(argument, repr(str(folder)))} is not writable. Pass a folder you can write to.")
    return folder


def _bounds(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    return f" <= {maximum}" if maximum is not None else ""
