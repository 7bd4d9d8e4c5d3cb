"""Interventions: cut a path (knockout), erase a representation (ablation), or swap one in (patching).

Why: the lens and the attention rows say what each layer would answer and where a token looks; they cannot say
what the answer *depends on*. An intervention changes one thing inside the forward and lets the rest run, so the
change in the answer measures the dependence. Three kinds, each a frozen value built by a verb:

- :func:`knockout` ``(queries, keys, layers, heads=None)``: in the given decoder layers, the query positions may not
  attend to the key positions (the attention mask is edited inside vlm_lens's attention function, so SDPA stays);
- :func:`ablate` ``(positions, layers, value="zero")``: the residual stream at hidden indices ``layers`` (as
  ``Trace.layers``: 0 = decoder input, ``l`` = output of decoder layer ``l``) is replaced at the positions by
  zero, by its mean over those positions, or by a given vector;
- :func:`patch` ``(source, positions, layers, source_positions=None)``: the residual stream there is replaced by
  the one another :class:`~vlm_lens.Trace` recorded (another checkpoint of the same shape, another image or prompt).

Positions are names or integers, resolved per sample and per forward by :mod:`vlm_lens.tracing.positions`.
``vl.trace(..., intervene=[...])`` applies interventions to every forward of a trace; this module holds what they
are and checks them against a model (:func:`bind`) before anything runs. How they act is
:mod:`vlm_lens.tracing.editing`.

Example:
    >>> ko = knockout("response", "image", layers=[0, 1])
    >>> ko.queries, ko.keys, ko.layers, ko.heads
    (('response',), ('image',), (0, 1), None)
    >>> ablate([3, 4], layers=2, value="mean").describe()["value"]
    'mean'
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Sequence, Union

import torch

from ..core.errors import VlmLensError
from .positions import check_names

if TYPE_CHECKING:
    from ..core.spans import Span
    from .record import Trace

__all__ = ["Ablation", "Intervention", "Knockout", "Patch", "ablate", "bind", "knockout", "patch"]

PositionSpec = Union[str, int, Sequence[Union[int, str]]]
LayerSpec = Union[int, Sequence[int], None]
_VALUES = ("zero", "mean")


@dataclass(frozen=True)
class Knockout:
    """Query positions may not attend to key positions in the given decoder layers (and heads).

    Attributes:
        queries, keys: Position specs (names and integers), see :mod:`vlm_lens.tracing.positions`.
        layers: Decoder layer indices (0-based, as ``Trace.attention_layers``); None: every layer.
        heads: Attention heads (0-based); None: all.
    """

    queries: tuple[int | str, ...]
    keys: tuple[int | str, ...]
    layers: tuple[int, ...] | None
    heads: tuple[int, ...] | None = None
    kind: ClassVar[str] = "knockout"

    def describe(self) -> dict[str, Any]:
        """A JSON-able record (what ``Trace.meta["interventions"]`` holds)."""
        return {"kind": self.kind, "queries": list(self.queries), "keys": list(self.keys),
                "layers": None if self.layers is None else list(self.layers),
                "heads": None if self.heads is None else list(self.heads)}


@dataclass(frozen=True, eq=False)
class Ablation:
    """The residual stream at hidden indices ``layers`` and ``positions`` replaced by ``value``.

    Attributes:
        positions: Position spec.
        layers: Hidden-state indices (0 = decoder input, ``l`` = output of decoder layer ``l``); None: all.
        value: ``"zero"``, ``"mean"`` (the mean over the positions, per sample and hidden index), or a tensor
            ``[d_model]`` or ``[n_positions, d_model]`` (row ``k`` replaces the ``k``-th position in order).
    """

    positions: tuple[int | str, ...]
    layers: tuple[int, ...] | None
    value: str | torch.Tensor = "zero"
    kind: ClassVar[str] = "ablation"

    def describe(self) -> dict[str, Any]:
        value = self.value if isinstance(self.value, str) else f"tensor{list(self.value.shape)}"
        return {"kind": self.kind, "positions": list(self.positions),
                "layers": None if self.layers is None else list(self.layers), "value": value}


@dataclass(frozen=True, eq=False)
class Patch:
    """The residual stream at hidden indices ``layers`` and ``positions`` replaced by ``source``'s.

    Attributes:
        source: The :class:`~vlm_lens.Trace` to read from; it must have kept those hidden indices and positions.
        positions: Position spec (of the patched trace).
        layers: Hidden-state indices; None: all.
        source_positions: Position spec on the source (same count, matched in order); None: the same positions,
            which needs a source of the same sequence length.
    """

    source: "Trace"
    positions: tuple[int | str, ...]
    layers: tuple[int, ...] | None
    source_positions: tuple[int | str, ...] | None = None
    kind: ClassVar[str] = "patch"

    def describe(self) -> dict[str, Any]:
        meta = self.source.meta
        return {"kind": self.kind, "positions": list(self.positions),
                "layers": None if self.layers is None else list(self.layers),
                "source_positions": None if self.source_positions is None else list(self.source_positions),
                "source": {"model": meta.get("model"), "prompt": meta.get("prompt"), "images": meta.get("images"),
                           "answer_ids": self.source.response_ids}}


Intervention = Union[Knockout, Ablation, Patch]
INTERVENTIONS = (Knockout, Ablation, Patch)


# ------------------------------------------------------------------------------------------------------- verbs
def knockout(queries: PositionSpec, keys: PositionSpec, layers: LayerSpec, heads: LayerSpec = None) -> Knockout:
    """Forbid ``queries`` to attend to ``keys`` in decoder ``layers`` (all heads, or ``heads``).

    Args:
        queries: Positions whose attention is cut: a segment name (``"response"``), a span name, a name registered
            by an upper layer (``"decision"``), a list of positions, or a list mixing them.
        keys: Positions they may no longer read.
        layers: Decoder layer indices, 0-based as ``Trace.attention_layers`` (negative ones count from the end);
            None for all.
        heads: Head indices; None for all heads.

    Example:
        >>> ko = vl.knockout("response", "image", range(4))                              # doctest: +SKIP
        >>> t = vl.trace(m, img, prompt, generate=8, intervene=[ko])                       # doctest: +SKIP
        >>> t.attention[:4, :, :, t.spans["image"].slice].sum()   # exactly 0 at response rows  # doctest: +SKIP
    """
    return Knockout(_positions(queries, "knockout(queries=...)"), _positions(keys, "knockout(keys=...)"),
                    _layers(layers, "knockout(layers=...)"), _layers(heads, "knockout(heads=...)"))


def ablate(positions: PositionSpec, layers: LayerSpec, value: str | torch.Tensor = "zero") -> Ablation:
    """Replace the residual stream at hidden indices ``layers`` and ``positions`` by zero, its mean, or a vector.

    Example:
        >>> t = vl.trace(m, img, prompt, intervene=[vl.ablate("image", layers=[0], value="mean")])  # doctest: +SKIP
    """
    if isinstance(value, str):
        if value not in _VALUES:
            raise VlmLensError(f"ablate(value={value!r}): expected 'zero', 'mean', or a tensor [d_model] or "
                               "[n_positions, d_model].")
    elif not isinstance(value, torch.Tensor) or value.ndim not in (1, 2) or not value.is_floating_point():
        raise VlmLensError(f"ablate(value=...): expected 'zero', 'mean', or a float tensor [d_model] or "
                           f"[n_positions, d_model]; got {_what(value)}.")
    return Ablation(_positions(positions, "ablate(positions=...)"), _layers(layers, "ablate(layers=...)"), value)


def patch(source: "Trace", positions: PositionSpec, layers: LayerSpec,
          source_positions: PositionSpec | None = None) -> Patch:
    """Replace the residual stream at hidden indices ``layers`` and ``positions`` by ``source``'s.

    Example:
        >>> one = vl.trace(one_stage, img, prompt, generate=48)                           # doctest: +SKIP
        >>> t = vl.trace(two_stage, img, prompt, generate=48,
        ...              intervene=[vl.patch(one, "image", layers=[2])])                  # doctest: +SKIP
    """
    from .record import Trace

    if not isinstance(source, Trace):
        raise VlmLensError(f"patch(source=...): expected a vl.Trace (e.g. vl.trace(other_model, image, prompt)), "
                           f"got {_what(source)}.")
    src = None if source_positions is None else _positions(source_positions, "patch(source_positions=...)")
    return Patch(source, _positions(positions, "patch(positions=...)"), _layers(layers, "patch(layers=...)"), src)


# ----------------------------------------------------------------------------------------------------- checks
def bind(intervene: Any, n_samples: int, adapter: Any, prompt_spans: Sequence[dict[str, "Span"]],
         generating: bool) -> list[list[Intervention]]:
    """Check ``intervene`` (as given to ``vl.trace``) against a model and a batch; return one list per sample.

    ``intervene`` is a list of interventions (every sample) or, for a batch, a list with one such list (or None)
    per sample. Layers and heads are checked against the model and normalised (negative ones counted from the
    end); names against the prompt's spans and the registered names.
    """
    if intervene is None:
        return [[] for _ in range(n_samples)]
    if isinstance(intervene, INTERVENTIONS):
        intervene = [intervene]
    if not isinstance(intervene, (list, tuple)):
        raise VlmLensError(f"intervene={_what(intervene)}: expected a list of interventions (vl.knockout, vl.ablate, "
                           "vl.patch) or, for a batch, one such list per prompt.")
    per_sample = any(isinstance(x, (list, tuple)) or x is None for x in intervene)
    if per_sample:
        if len(intervene) != n_samples:
            raise VlmLensError(f"intervene: {len(intervene)} lists of interventions for {n_samples} prompts; pass one "
                               "list (or None) per prompt, or one flat list for every prompt.")
        lists = [[] if x is None else (list(x) if isinstance(x, (list, tuple)) else [x]) for x in intervene]
    else:
        lists = [list(intervene)] * n_samples
    out = []
    for i, items in enumerate(lists):
        bound = []
        for k, item in enumerate(items):
            where = f"intervene[{i}][{k}]" if per_sample else f"intervene[{k}]"
            bound.append(_bind_one(item, where, adapter, prompt_spans[i], generating))
        out.append(bound)
    return out


def _bind_one(item: Any, where: str, adapter: Any, spans: dict, generating: bool) -> Intervention:
    if not isinstance(item, INTERVENTIONS):
        raise VlmLensError(f"{where} is {_what(item)}, not an intervention; build one with vl.knockout(...), "
                           "vl.ablate(...) or vl.patch(...).")
    n_layers, n_heads = adapter.n_layers, adapter.n_heads
    specs = [("queries", item.queries), ("keys", item.keys)] if isinstance(item, Knockout) else \
        [("positions", item.positions)]
    if isinstance(item, Patch) and item.source_positions is not None:
        check_names(item.source_positions, item.source.spans, f"{where}.source_positions")
    for name, spec in specs:
        check_names(spec, spans, f"{where}.{name}")
        if generating and any(isinstance(p, int) and p < 0 for p in spec):
            raise VlmLensError(f"{where}.{name}: negative positions count from the end of the traced sequence, "
                               "which is not known while the answer is generated; pass positions >= 0 or a name "
                               "('response', ...).")
    if isinstance(item, Knockout):
        layers = _in_range(item.layers, n_layers, f"{where}.layers", "decoder layer indices 0..n_layers-1")
        heads = None if item.heads is None else _in_range(item.heads, n_heads, f"{where}.heads", "head indices")
        return replace(item, layers=layers, heads=heads)
    layers = _in_range(item.layers, n_layers + 1, f"{where}.layers", "hidden-state indices 0..n_layers")
    d_model = int(adapter.text_config.hidden_size)
    if isinstance(item, Ablation):
        if isinstance(item.value, torch.Tensor) and item.value.shape[-1] != d_model:
            raise VlmLensError(f"{where}: value of shape {list(item.value.shape)} for a model of d_model {d_model}; "
                               f"pass [{d_model}] or [n_positions, {d_model}].")
        return replace(item, layers=layers)
    source = item.source
    if source.hidden.shape[-1] != d_model:
        raise VlmLensError(f"{where}: the patch source has d_model {source.hidden.shape[-1]}, this model "
                           f"{d_model}; patch between models of the same shape.")
    missing = [l for l in layers if l not in source.layers]
    if missing:
        raise VlmLensError(f"{where}: the patch source kept hidden indices {list(source.layers)}, not {missing}; "
                           "trace the source with keep=vl.Keep(layers=None) (all) or including them.")
    return replace(item, layers=layers)


def _positions(spec: Any, argument: str) -> tuple[int | str, ...]:
    items = [spec] if isinstance(spec, (str, int)) else spec
    if isinstance(items, range):
        items = list(items)
    if isinstance(items, torch.Tensor):
        items = items.tolist()
    if not isinstance(items, (list, tuple)) or isinstance(spec, bool):
        raise VlmLensError(f"{argument}: expected a position name ('image', 'response', ...), a list of positions "
                           f"(integers), or a list mixing them; got {_what(spec)}.")
    if not items:
        raise VlmLensError(f"{argument}: the position set is empty; name at least one position.")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise VlmLensError(f"{argument}: {item!r} is neither a position (integer) nor a name.")
    return tuple(int(p) if not isinstance(p, str) else p for p in items)


def _layers(spec: Any, argument: str) -> tuple[int, ...] | None:
    if spec is None:
        return None
    items = [spec] if isinstance(spec, int) and not isinstance(spec, bool) else spec
    if isinstance(items, range):
        items = list(items)
    if not isinstance(items, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        raise VlmLensError(f"{argument}: expected an integer, a list of integers or None (all); got {_what(spec)}.")
    if not items:
        raise VlmLensError(f"{argument}: the list is empty; pass None for all.")
    return tuple(items)


def _in_range(values: tuple[int, ...] | None, size: int, argument: str, meaning: str) -> tuple[int, ...]:
    if values is None:
        return tuple(range(size))
    bad = [v for v in values if not -size <= v < size]
    if bad:
        raise VlmLensError(f"{argument}: {bad} out of range; expected {meaning} (this model has {size}; negative "
                           "values count from the end).")
    return tuple(sorted({v % size for v in values}))


def _what(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)} ({value.dtype})"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"
