"""How interventions act inside the forwards of one traced batch: installed for a ``with`` block, always removed.

Why here, and not as user hooks: an intervention is specified in positions of each sample's own sequence, but it
acts on a left-padded batch, during generation on one new token per forward with everything earlier in the KV
cache, and must act identically in the teacher-forced pass that records the Trace. :class:`Editing` keeps, per
sample, the tokens so far (a :class:`~vlm_lens.tracing.positions.SequenceView`) and its padding; before each
forward it resolves every intervention's positions on that view and keeps what concerns the positions this forward
feeds (a plan). Then:

- **knockout**: the attention function of :mod:`vlm_lens.tracing.hooks` asks :meth:`Editing.edit_mask` for each
  knocked layer's mask: the model's own mask (rebuilt where SDPA was given none) with the blocked (query, key)
  pairs closed, per head where heads are named. The delegate (SDPA, or eager with an additive mask) runs on it, and
  recorded attention rows read the same mask: knocked keys hold exactly zero mass. A knockout that closes nothing
  the mask left open leaves the mask, and the forward, untouched;
- **ablation / patching**: a forward hook on the decoder layer (a pre-hook on layer 0 for hidden index 0) returns
  the residual stream with the positions replaced. These hooks are installed before the recorder's, so the Trace
  records the replaced values.

During generation it also notes where each intervention acted (:attr:`Editing.applied`), so that the tracer can
check that the teacher-forced pass intervened on the same rows (:func:`mismatches`).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..core.errors import VlmLensError
from . import hooks
from .interventions import Ablation, Intervention, Knockout, Patch
from .positions import SequenceView, resolve_positions

__all__ = ["Editing", "InterventionWarning", "described", "mismatches"]


class InterventionWarning(UserWarning):
    """An intervention acted on other rows while the answer was generated than in the teacher-forced pass."""


@dataclass
class _Replace:
    """One residual replacement of one forward: sample ``sample``'s ``rows`` (sequence positions) of the set
    ``positions``, by intervention ``item``."""

    sample: int
    rows: list[int]
    positions: list[int]
    item: Ablation | Patch
    source_rows: list[int] | None = None


@dataclass
class _Plan:
    width: int
    knock: dict[int, list[tuple[int, tuple[int, ...] | None, list[int], list[int]]]] = \
        field(default_factory=lambda: defaultdict(list))
    replace: dict[int, list[_Replace]] = field(default_factory=lambda: defaultdict(list))


class Editing:
    """Apply per-sample interventions to the forwards run inside the ``with`` block.

    Args:
        adapter: The family adapter.
        interventions: Per sample, its interventions (checked by :func:`~vlm_lens.tracing.interventions.bind`).
        views: Per sample, the view of its sequence before the first forward: the whole sequence
            (``complete=True``, one teacher-forced forward) or the prompt (``complete=False``, generation: every
            further forward feeds one generated token per sample, read from its ``input_ids``).
        pads: Per sample, the left padding of the first forward's inputs.

    Attributes:
        resolved: After a complete forward, per sample and intervention, the positions it acted on.
        applied: During generation, per sample and intervention, ``(view length, rows, keys)`` of each forward.
    """

    def __init__(self, adapter: Any, interventions: list[list[Intervention]], views: list[SequenceView],
                 pads: list[int]) -> None:
        self.adapter, self.interventions, self.views, self.pads = adapter, interventions, list(views), list(pads)
        self.complete = all(v.complete for v in views)
        self.plan: _Plan | None = None
        self.resolved: list[list[dict[str, list[int]]]] = [[{} for _ in items] for items in interventions]
        self.applied: list[list[list[tuple[int, list[int], list[int]]]]] = [[[] for _ in items]
                                                                            for items in interventions]
        self._sources: dict[tuple[int, int], tuple[SequenceView, list[int] | None]] = {}
        self._handles: list[Any] = []
        self._switched = False

    # ------------------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Editing":
        try:
            self._install()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._remove()

    def _install(self) -> None:
        adapter = self.adapter
        items = [item for sample in self.interventions for item in sample]
        if not items:
            return  # nothing to do: no hook at all
        self._handles.append(adapter.model.register_forward_pre_hook(self._before_forward, with_kwargs=True))
        indices = sorted({l for item in items if not isinstance(item, Knockout) for l in item.layers})
        for index in indices:
            if index == 0:
                self._handles.append(adapter.layers[0].register_forward_pre_hook(self._replace_input, with_kwargs=True))
            else:
                self._handles.append(adapter.layers[index - 1].register_forward_hook(self._output_hook(index)))
        knocked = sorted({l for item in items if isinstance(item, Knockout) for l in item.layers})
        for layer in knocked:
            hooks.add_editor(adapter.attention_module(adapter.layers[layer]), self, layer)
        if knocked:
            hooks.switch(adapter.text_config)
            self._switched = True

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        hooks.remove_editors(self)
        if self._switched:
            hooks.restore(self.adapter.text_config)
            self._switched = False

    # --------------------------------------------------------------------------------------------------- plans
    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(ids, torch.Tensor) or ids.shape[0] != len(self.views):
            raise VlmLensError("interventions need each forward's input_ids, one row per sample (no beam search, "
                               "no inputs_embeds); pass generate=vl.Generation(...) without num_beams.")
        if self.plan is None:
            width = int(ids.shape[1])
            fed = [range(len(v)) for v in self.views]
        else:
            if self.complete:
                raise RuntimeError("a second forward inside a teacher-forced Editing block")
            self.views = [v.extended(t) for v, t in zip(self.views, ids[:, -1].tolist())]
            width = self.plan.width + 1
            fed = [range(len(v) - 1, len(v)) for v in self.views]
        self.plan = self._make_plan(width, fed)

    def _make_plan(self, width: int, fed: list[range]) -> _Plan:
        plan = _Plan(width)
        for i, (view, items) in enumerate(zip(self.views, self.interventions)):
            for j, item in enumerate(items):
                where = f"sample {i}, intervention {j} ({item.kind})"
                if isinstance(item, Knockout):
                    queries = self._resolve(item.queries, view, f"{where}: queries")
                    rows = [p for p in queries if p in fed[i]]
                    keys = self._resolve(item.keys, view, f"{where}: keys") if rows or view.complete else []
                    if rows and keys:
                        for layer in item.layers:
                            plan.knock[layer].append((i, item.heads, rows, keys))
                    self._note(i, j, view, rows, keys, {"queries": queries, "keys": keys})
                else:
                    positions = self._resolve(item.positions, view, f"{where}: positions")
                    rows = [p for p in positions if p in fed[i]]
                    source_rows = self._source_rows(i, j, item, view, positions, rows, where)
                    if rows:
                        for index in item.layers:
                            plan.replace[index].append(_Replace(i, rows, positions, item, source_rows))
                    resolved = {"positions": positions}
                    if source_rows is not None and isinstance(item, Patch):
                        resolved["source_positions"] = source_rows
                    self._note(i, j, view, rows, [], resolved)
        return plan

    def _resolve(self, spec: tuple, view: SequenceView, where: str) -> list[int]:
        positions = resolve_positions(spec, view, where)
        if view.complete and not positions:
            raise VlmLensError(f"{where}: {list(spec)} names no position of this sequence ({len(view)} positions, "
                               f"segments {sorted(set(view.segments))}); name positions it has.")
        return positions

    def _note(self, i: int, j: int, view: SequenceView, rows: list[int], keys: list[int],
              resolved: dict[str, list[int]]) -> None:
        if view.complete:
            self.resolved[i][j] = resolved
        elif rows:
            self.applied[i][j].append((len(view), rows, keys))

    def _source_rows(self, i: int, j: int, item: Ablation | Patch, view: SequenceView, positions: list[int],
                     rows: list[int], where: str) -> list[int] | None:
        """For a patch: the source position of each row (of ``positions`` when the view is complete)."""
        if not isinstance(item, Patch):
            return None
        source = self._sources.get((i, j))
        if source is None:
            source_view = SequenceView.of(item.source)
            named = None if item.source_positions is None else \
                self._resolve(item.source_positions, source_view, f"{where}: source_positions")
            source = self._sources[(i, j)] = (source_view, named)
        source_view, named = source
        wanted = positions if view.complete else rows
        if named is None:
            if view.complete and len(source_view) != len(view):
                raise VlmLensError(f"{where}: the patch source is {len(source_view)} positions long, this sequence "
                                   f"{len(view)}; pass source_positions= (e.g. the same name: source_positions="
                                   f"{list(item.positions)!r}) to say which source positions to read.")
            late = [p for p in wanted if p >= len(source_view)]
            if late:
                raise VlmLensError(f"{where}: positions {late[:5]} are beyond the patch source's {len(source_view)} "
                                   "positions; pass source_positions=.")
            return list(wanted)
        if (view.complete and len(named) != len(positions)) or len(positions) > len(named):
            raise VlmLensError(f"{where}: {len(positions)} positions to patch but {len(named)} source positions; "
                               "they are matched in order and must be as many.")
        return [named[positions.index(p)] for p in wanted]

    # ----------------------------------------------------------------------------------------------- knockout
    def edit_mask(self, layer: int, module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                  mask: torch.Tensor | None, kwargs: dict, *, additive: bool) -> torch.Tensor | None:
        """The mask of ``layer`` with this forward's knocked (query, key) pairs closed; None when nothing closes."""
        entries = self.plan.knock.get(layer) if self.plan is not None else None
        if not entries:
            return None
        batch, heads, q_len, _ = query.shape
        kv_len, device = key.shape[2], query.device
        row_base, key_base = self.plan.width - q_len, self.plan.width - kv_len
        per_head = any(h is not None for _, h, _, _ in entries)
        blocked = torch.zeros(batch, heads if per_head else 1, q_len, kv_len, dtype=torch.bool, device=device)
        for i, chosen, rows, keys in entries:
            pad = self.pads[i]
            r = torch.tensor([pad + p - row_base for p in rows], device=device)
            k = torch.tensor([c for c in (pad + p - key_base for p in keys) if c >= 0], dtype=torch.long,
                             device=device)
            h = torch.tensor(chosen if chosen is not None else range(blocked.shape[1]), device=device)
            blocked[i, h[:, None, None], r[None, :, None], k[None, None, :]] = True
        full = hooks.full_mask(module, mask, batch, q_len, kv_len, kwargs, device)
        is_open = full if full.dtype == torch.bool else full > torch.finfo(full.dtype).min / 2
        if not (is_open & blocked).any():
            return None  # every blocked pair was closed already (e.g. keys after a causal query)
        now_open = is_open & ~blocked
        self._check_rows(layer, is_open, now_open, row_base)
        if not additive:
            return now_open
        low = torch.finfo(query.dtype).min
        if full.dtype == torch.bool:
            return torch.zeros(now_open.shape, dtype=query.dtype, device=device).masked_fill(~now_open, low)
        return full.masked_fill(blocked, low)

    def _check_rows(self, layer: int, was: torch.Tensor, now: torch.Tensor, row_base: int) -> None:
        emptied = (was.any(-1) & ~now.any(-1)).nonzero()
        if len(emptied):
            sample, _, row = (int(x) for x in emptied[0])
            position = row_base + row - self.pads[sample]
            raise VlmLensError(f"knockout in decoder layer {layer} leaves position {position} of sample {sample} no "
                               "key to attend to (softmax over nothing); keep at least one key open, e.g. leave the "
                               "query's own position out of keys.")

    # -------------------------------------------------------------------------------------- ablation, patching
    def _replace_input(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if args:
            new = self._replace(0, args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        new = self._replace(0, kwargs["hidden_states"])
        return None if new is None else (args, {**kwargs, "hidden_states": new})

    def _output_hook(self, index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            new = self._replace(index, hidden)
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, (tuple, list)) else new

        return hook

    def _replace(self, index: int, hidden: torch.Tensor) -> torch.Tensor | None:
        entries = self.plan.replace.get(index) if self.plan is not None else None
        if not entries:
            return None
        row_base = self.plan.width - hidden.shape[1]
        out = hidden.clone()
        for entry in entries:
            rows = [self.pads[entry.sample] + p - row_base for p in entry.rows]
            out[entry.sample, rows] = self._value(entry, index, hidden, rows)
        return out

    def _value(self, entry: _Replace, index: int, hidden: torch.Tensor, rows: list[int]) -> torch.Tensor:
        item, dtype, device = entry.item, hidden.dtype, hidden.device
        if isinstance(item, Patch):
            values = item.source.hidden_at(entry.source_rows, [index])[0]
            return values.to(device=device, dtype=dtype)
        if isinstance(item.value, torch.Tensor):
            value = item.value.to(device=device, dtype=dtype)
            if value.ndim == 1:
                return value.expand(len(rows), -1)
            if value.shape[0] != len(entry.positions) and (self.complete or value.shape[0] < len(entry.positions)):
                raise VlmLensError(f"ablate(value=...): {value.shape[0]} rows for {len(entry.positions)} positions "
                                   f"of sample {entry.sample}; pass one row per position, or a [d_model] vector.")
            return value[[entry.positions.index(p) for p in entry.rows]]
        if item.value == "zero":
            return torch.zeros(len(rows), hidden.shape[-1], dtype=dtype, device=device)
        if len(entry.rows) != len(entry.positions):
            raise VlmLensError(f"ablate(value='mean') over positions {entry.positions[:6]}... of sample "
                               f"{entry.sample}: they are fed by several forwards of the generation (the answer "
                               "grows), so their mean is not known at once; mean-ablate prompt positions, or pass "
                               "the mean as a tensor.")
        return hidden[entry.sample, rows].float().mean(0).to(dtype).expand(len(rows), -1)


def mismatches(applied: list[list[tuple[int, list[int], list[int]]]], resolved: list[dict[str, list[int]]],
               fed: int) -> list[int]:
    """Indices of the interventions whose rows during generation differ from those of the teacher-forced pass.

    Args:
        applied: Per intervention, ``(view length, rows, keys)`` of each generation forward (:attr:`Editing.applied`).
        resolved: Per intervention, the positions of the teacher-forced pass (:attr:`Editing.resolved`).
        fed: Positions fed during generation (the sequence length minus its last token).
    """
    out = []
    for j, (steps, final) in enumerate(zip(applied, resolved)):
        rows_final = final.get("queries", final.get("positions", []))
        keys_final = final.get("keys", [])
        rows = sorted({p for _, r, _ in steps for p in r if p < fed})
        same = rows == [p for p in rows_final if p < fed]
        for length, _, keys in steps:
            if keys_final and keys != [k for k in keys_final if k < length] and length <= fed:
                same = False
        if not same:
            out.append(j)
    return out


def described(items: list[Intervention], resolved: list[dict[str, list[int]]],
              applied: list[list[tuple[int, list[int], list[int]]]] | None, fed: int) -> list[dict[str, Any]]:
    """What ``Trace.meta["interventions"]`` holds for one sample: each intervention's record, the positions it acted
    on in the teacher-forced pass, and — after generation — whether it acted on the same rows while generating
    (warned about when not: a position name whose extent depends on later tokens)."""
    bad = set(mismatches(applied, resolved, fed)) if applied is not None else set()
    out = []
    for j, (item, positions) in enumerate(zip(items, resolved)):
        record = {**item.describe(), "resolved": positions}
        if applied is not None:
            record["same_rows_in_generation"] = j not in bad
        out.append(record)
    if bad:
        names = [items[j].describe() for j in sorted(bad)]
        warnings.warn(f"interventions {names} acted on other positions while the answer was generated than in the "
                      "teacher-forced pass (a position name whose extent depends on tokens after the row); the "
                      "Trace shows the teacher-forced pass, the answer came from the generation. See "
                      "meta['interventions'][k]['same_rows_in_generation'].", InterventionWarning, stacklevel=4)
    return out
