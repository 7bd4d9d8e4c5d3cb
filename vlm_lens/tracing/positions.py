"""Named positions: which decoder positions ``"image"``, ``"response"`` or ``[3, -1]`` mean in one sequence.

Why a module of its own: an intervention names the positions it acts on the way a user thinks of them — a segment
of ``Trace.tokens`` (``"system"``, ``"image"``, ``"instruction"``, ``"response"``), a span of ``Trace.spans``
(``"image_1"``, ``"prompt"``), or integers — and the same name must mean the same positions wherever it is read:
in every forward of a generation, in the teacher-forced pass, and on a patch source. Resolution is therefore one
function, :func:`resolve_positions`, over one plain view of a sequence, :class:`SequenceView`.

Names that need more than labels are resolved by functions that upper layers register with
:func:`register_position` (the BIQA layer adds ``"description"`` and ``"decision"``); this module names no
domain word itself.

What a name means in each forward:

- **teacher-forced pass** (and a patch source): the whole traced sequence (``complete=True``);
- **generation step**: the tokens so far — the prompt and the answer generated up to the token this step feeds
  (``complete=False``). A segment or span never changes once its tokens are written, so it means the same
  positions in both (``"response"`` grows by one token per step). Negative integers count from the end of the
  whole sequence, which a generation step does not know yet: they are refused when the answer is generated.

Example:
    >>> view = SequenceView(ids=(1, 9, 9, 5, 7), segments=("system", "image", "image", "instruction", "response"),
    ...                     spans={}, prompt_length=4, complete=True)
    >>> resolve_positions(("image", -1), view, "positions")
    [1, 2, 4]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import pandas as pd

from ..core.errors import VlmLensError
from ..core.spans import SEGMENTS, Span

if TYPE_CHECKING:
    from .record import Trace

__all__ = ["PositionResolver", "SequenceView", "check_names", "register_position", "registered_positions",
           "resolve_positions"]

#: ``view -> positions`` (a list of sequence positions, a :class:`Span`, or None for none).
PositionResolver = Callable[["SequenceView"], "Sequence[int] | Span | None"]

#: Span names a trace always may have (besides ``image_<k>``): they cannot be taken by a registered resolver.
_SPAN_NAMES = ("image", "instruction", "response", "prompt")
_RESOLVERS: dict[str, PositionResolver] = {}


@dataclass(frozen=True)
class SequenceView:
    """The tokens of one sample as one forward sees them: enough to resolve any position name.

    Attributes:
        ids: Token ids of the unpadded sequence so far (``-200``-style image markers included).
        segments: One label of :data:`~vlm_lens.core.spans.SEGMENTS` per position.
        spans: Named spans (as ``Trace.spans``; during generation, the prompt's spans).
        prompt_length: Number of prompt positions; positions from there on are the response.
        complete: True for the whole traced sequence (teacher-forced pass, a saved trace), False for the tokens
            seen so far by a generation step.
        model: The :class:`~vlm_lens.tracing.loading.LensModel` (resolvers that read text need its tokenizer).
    """

    ids: tuple[int, ...]
    segments: tuple[str, ...]
    spans: Mapping[str, Span]
    prompt_length: int
    complete: bool
    model: Any = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def tokens(self) -> pd.DataFrame:
        """``pos, id, segment``: the columns of ``Trace.tokens`` that resolvers read."""
        return pd.DataFrame({"pos": range(len(self.ids)), "id": list(self.ids), "segment": list(self.segments)})

    def extended(self, token: int) -> "SequenceView":
        """The view after one more generated token (labelled ``response``)."""
        return SequenceView(self.ids + (int(token),), self.segments + ("response",), self.spans, self.prompt_length,
                            self.complete, self.model)

    @classmethod
    def of(cls, trace: "Trace") -> "SequenceView":
        """The complete view of a trace."""
        return cls(tuple(int(i) for i in trace.tokens["id"].tolist()), tuple(trace.tokens["segment"].tolist()),
                   dict(trace.spans), int(trace.prompt_length), True, trace.model)


def register_position(name: str, resolver: PositionResolver) -> None:
    """Let interventions name positions ``name``: ``resolver(view)`` returns them for a :class:`SequenceView`.

    The resolver is called on complete views (teacher-forced pass, patch sources) and, during generation, on the
    tokens so far; it must say in its docstring what it returns for each. Registering the same function again does
    nothing; a name already taken (by a segment, a span or another resolver) is refused.

    Example:
        >>> register_position("first", lambda view: [0])
        >>> "first" in registered_positions()
        True
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise VlmLensError(f"register_position: name={name!r}; expected an identifier such as 'description'.")
    if name in SEGMENTS or name in _SPAN_NAMES or name.startswith("image_"):
        raise VlmLensError(f"register_position: {name!r} is a segment or span name of every trace; pick another.")
    if not callable(resolver):
        raise VlmLensError(f"register_position({name!r}, ...): expected a function view -> positions, got "
                           f"{type(resolver).__name__}.")
    if _RESOLVERS.get(name, resolver) is not resolver:
        raise VlmLensError(f"register_position: {name!r} is already registered by {_RESOLVERS[name]!r}.")
    _RESOLVERS[name] = resolver


def registered_positions() -> list[str]:
    """Names added by :func:`register_position`."""
    return sorted(_RESOLVERS)


def known_names(spans: Mapping[str, Span]) -> list[str]:
    """Every name a sequence with ``spans`` understands: segments, its spans, registered names."""
    return list(dict.fromkeys([*SEGMENTS, *spans, "prompt", *registered_positions()]))


def check_names(spec: Sequence[int | str], spans: Mapping[str, Span], argument: str) -> None:
    """Refuse names that no view with ``spans`` (a prompt's) could resolve, before anything runs."""
    for item in spec:
        if isinstance(item, str) and item not in known_names(spans) and item != "response":
            raise VlmLensError(f"{argument}: unknown position name {item!r}; expected a segment, a span of this "
                               f"sequence or a registered name ({', '.join(map(repr, known_names(spans)))}), or "
                               "a list of positions (integers).")


def resolve_positions(spec: Sequence[int | str], view: SequenceView, argument: str) -> list[int]:
    """Sorted positions of ``view`` named by ``spec`` (names and integers, their union).

    In a complete view an integer outside the sequence is an error; in a generation view a non-negative integer
    beyond the tokens so far is simply not there yet.
    """
    n = len(view)
    out: set[int] = set()
    for item in spec:
        if isinstance(item, str):
            out.update(_named(item, view, argument))
        elif item < 0:
            if not view.complete:
                raise VlmLensError(f"{argument}: position {item} counts from the end of the sequence, which is not "
                                   "known while the answer is generated; pass a position >= 0 or a name.")
            if item < -n:
                raise VlmLensError(f"{argument}: position {item} is out of range for a sequence of {n} positions "
                                   f"(valid: {-n}..{n - 1}).")
            out.add(item + n)
        elif item < n:
            out.add(item)
        elif view.complete:
            raise VlmLensError(f"{argument}: position {item} is out of range for a sequence of {n} positions "
                               f"(valid: {-n}..{n - 1}).")
    return sorted(out)


def _named(name: str, view: SequenceView, argument: str) -> list[int]:
    if name in SEGMENTS:
        return [p for p, s in enumerate(view.segments) if s == name]
    if name in view.spans:
        span = view.spans[name]
        return list(range(span.start, min(span.stop, len(view))))
    if name == "prompt":
        return list(range(min(view.prompt_length, len(view))))
    if name in _RESOLVERS:
        found = _RESOLVERS[name](view)
        if found is None:
            return []
        positions = list(range(found.start, found.stop)) if isinstance(found, Span) else [int(p) for p in found]
        bad = [p for p in positions if not 0 <= p < len(view)]
        if bad:
            raise RuntimeError(f"position resolver {name!r} returned {bad}, outside [0, {len(view)})")
        return positions
    raise VlmLensError(f"{argument}: unknown position name {name!r}; expected one of "
                       f"{', '.join(map(repr, known_names(view.spans)))}, or a list of positions (integers).")
