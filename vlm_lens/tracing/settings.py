"""The two groups of settings of :func:`vlm_lens.trace`: how the answer is generated, and what the forward keeps.

Why two small dataclasses instead of eighteen keyword arguments: the settings fall into two groups that vary
independently (a sampled answer with every layer kept, a greedy answer with one layer kept), each group is
checked once when it is built — not at the first batch of a long run — and a signature of ``generate=`` and
``keep=`` says what a trace does at a glance. Both are frozen, so one object can be shared by many calls.

Example:
    >>> from vlm_lens.tracing.settings import Generation, Keep
    >>> Generation(48, do_sample=True, temperature=0.7, seed=3).max_new_tokens
    48
    >>> Keep(layers=[0, -1], attention=False).attention
    False
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from ..core.checks import as_bool, as_device, as_dtype, as_int, as_number, is_integer, shown
from ..core.errors import VlmLensError

__all__ = ["DEFAULT_NEW_TOKENS", "Generation", "Keep", "OWN_GENERATE_ARGUMENTS"]

#: Tokens generated when ``generate=True``.
DEFAULT_NEW_TOKENS = 32

#: ``model.generate`` arguments that :class:`Generation` sets itself (its fields, or what the traced answer relies
#: on); in ``Generation(kwargs=...)`` they would silently override the fields while ``Trace.meta`` and the context
#: check kept the fields' values, so they are refused there.
OWN_GENERATE_ARGUMENTS = {
    "max_new_tokens": "Generation(max_new_tokens=...)", "max_length": "Generation(max_new_tokens=...)",
    "do_sample": "Generation(do_sample=...)", "temperature": "Generation(temperature=...)",
    "top_p": "Generation(top_p=...)", "generation_config": "the fields of vl.Generation and kwargs",
    "num_return_sequences": "one trace per answer: repeat the prompt in a list, with one seed per copy",
}


@dataclass(frozen=True)
class Generation:
    """How the answer is generated before the teacher-forced pass traces prompt + answer.

    Args:
        max_new_tokens: Tokens to generate at most (generation stops earlier at the end-of-sequence token).
        do_sample: Sample instead of greedy decoding. Each sample draws from its own generator seeded with
            ``seed``, so a sampled answer does not depend on the rest of the batch and the global random state is
            not touched.
        temperature, top_p: Sampling settings (used with ``do_sample``).
        seed: One int for every sample, one int per sample (a sequence), or None for a fresh random seed per sample
            (recorded in ``Trace.meta["seed"]``).
        kwargs: Further keyword arguments for ``model.generate`` (e.g. ``repetition_penalty``); the ones the fields
            above set (``max_new_tokens``, ``do_sample``, ...) are refused here (see :data:`OWN_GENERATE_ARGUMENTS`).

    Example:
        >>> Generation(8).do_sample
        False
    """

    max_new_tokens: int = DEFAULT_NEW_TOKENS
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | Sequence[int] | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_new_tokens", as_int(
            self.max_new_tokens, "Generation(max_new_tokens)", minimum=1,
            meaning="a number of new tokens (use generate=0 for no generation)"))
        object.__setattr__(self, "do_sample", as_bool(self.do_sample, "Generation(do_sample)"))
        object.__setattr__(self, "temperature", as_number(self.temperature, "Generation(temperature)"))
        object.__setattr__(self, "top_p", as_number(self.top_p, "Generation(top_p)"))
        if self.do_sample and (not self.temperature > 0 or not 0 < self.top_p <= 1):
            raise VlmLensError(f"Generation(temperature={self.temperature}, top_p={self.top_p}): sampling needs "
                               "temperature > 0 and 0 < top_p <= 1.")
        if self.seed is not None:
            if is_integer(self.seed):
                object.__setattr__(self, "seed", int(self.seed))
            elif isinstance(self.seed, (str, bytes)) or not hasattr(self.seed, "__iter__") or not all(
                    is_integer(s) for s in self.seed):
                raise VlmLensError(f"Generation(seed={shown(self.seed)}): expected an int, one int per prompt, or "
                                   "None.")
            else:
                object.__setattr__(self, "seed", tuple(int(s) for s in self.seed))
        if not isinstance(self.kwargs, Mapping):
            raise VlmLensError(f"Generation(kwargs={shown(self.kwargs)}): expected a mapping of keyword arguments for "
                               "model.generate.")
        owned = [k for k in self.kwargs if k in OWN_GENERATE_ARGUMENTS]
        if owned or not all(isinstance(k, str) for k in self.kwargs):
            fixes = "; ".join(f"{k!r}: use {OWN_GENERATE_ARGUMENTS[k]}" for k in owned) or "keys must be strings"
            raise VlmLensError(f"Generation(kwargs={shown(dict(self.kwargs))}): {fixes}. These are set by "
                               "vl.Generation itself, and the trace's meta and context check read its fields.")

    @classmethod
    def of(cls, generate: "int | bool | Generation | None") -> "Generation | None":
        """``generate=`` as given to :func:`vlm_lens.trace`: a number of tokens, True (32), False / 0 / None (no
        generation), or a :class:`Generation`."""
        if isinstance(generate, Generation):
            return generate
        if generate is True:
            return cls()
        if generate is False or generate is None or (is_integer(generate) and int(generate) == 0):
            return None
        if not is_integer(generate) or int(generate) < 0:
            raise VlmLensError(f"generate={shown(generate)}: expected a number of new tokens >= 0, True for "
                               f"{DEFAULT_NEW_TOKENS}, False for none, or a vl.Generation(...).")
        return cls(int(generate))


@dataclass(frozen=True)
class Keep:
    """What the traced forward keeps of each sample.

    Args:
        layers: Hidden-state indices 0..n_layers (0 = decoder input; negative ones count from the end); None: all.
        positions: Sequence positions whose hidden states are kept (negative ones count from the end); None: all.
        query_positions: Positions whose attention rows and final logits are kept. None: with generation, the last
            prompt position and every response position (the positions that predict and hold the answer);
            without, the last position.
        attention: True for rows in every decoder layer, False for none, or decoder layer indices (0-based).
        dtype, device: How and where hidden states are kept (None: as computed). ``dtype`` is a floating dtype or
            its name (``"float16"``); ``device`` must exist on this machine.

    Example:
        >>> Keep(positions=[-1], attention=[0, 1]).positions
        (-1,)
    """

    layers: Sequence[int] | None = None
    positions: Sequence[int] | None = None
    query_positions: Sequence[int] | None = None
    attention: bool | Sequence[int] = True
    dtype: torch.dtype | None = None
    device: torch.device | str | None = None

    def __post_init__(self) -> None:
        for name in ("layers", "positions", "query_positions"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise VlmLensError(f"Keep({name}={shown(value)}): expected a list of integers (e.g. [{value!r}]) or "
                                   "None.")
            object.__setattr__(self, name, _integers(value, f"Keep({name})"))
        if self.attention is not True and self.attention is not False and self.attention is not None:
            if isinstance(self.attention, (str, bytes)) or not hasattr(self.attention, "__iter__"):
                raise VlmLensError(f"Keep(attention={shown(self.attention)}): expected True, False, or a list of "
                                   "decoder layer indices.")
            object.__setattr__(self, "attention", _integers(self.attention, "Keep(attention)"))
        object.__setattr__(self, "dtype", as_dtype(self.dtype, "Keep(dtype)"))
        object.__setattr__(self, "device", as_device(self.device, "Keep(device)"))


def _integers(values: Any, argument: str) -> tuple[int, ...]:
    """``values`` as a tuple of ints (numpy and 0-d torch integers included); ranges are checked by the trace, which
    knows the model and the sequence."""
    values = tuple(values)
    bad = [v for v in values if not is_integer(v)]
    if bad:
        raise VlmLensError(f"{argument}: {shown(bad[0])} is not an integer; expected a list of integers (hidden "
                           "indices, positions or layers; negative ones count from the end).")
    return tuple(int(v) for v in values)
