"""The one check of the bad-input suite: a mistake is refused with the library's error, a message that names the
argument (and what was given), and — where a model is involved — the model exactly as it was.

"Exactly as it was" is measured, not assumed: the model's own logits on a fixed input (bit for bit), the hooks in
every module, the decoder's attention implementation, transformers' global attention / mask registries, the
training flag and every weight.

The fixtures of the suite (``tiny``, ``ctx``, ``traced``) are in ``fixtures.py``, loaded by tests/conftest.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pytest
import torch
from conftest import attention_state, random_image

import vlm_lens as vl


@dataclass
class Case:
    """One bad input: ``call(ctx)`` must raise ``error`` with each of ``names`` in its message.

    ``model`` says whether ``ctx.model`` must come out unchanged (True for every case that hands it the model).
    """

    id: str
    call: Callable[[Any], Any]
    names: Sequence[str]
    error: type[Exception] = vl.VlmLensError
    model: bool = False
    marks: list = field(default_factory=list)


def params(cases: Sequence[Case]) -> list:
    """``cases`` as pytest parameters with readable ids (ids must be unique: a copy-pasted case is a mistake)."""
    ids = [c.id for c in cases]
    assert len(set(ids)) == len(ids), sorted(i for i in ids if ids.count(i) > 1)
    return [pytest.param(c, id=c.id, marks=c.marks) for c in cases]


@dataclass
class Snapshot:
    """What an error must leave as it was."""

    logits: torch.Tensor
    state: tuple
    training: bool
    weights: dict[str, torch.Tensor]


def snapshot(model: vl.LensModel) -> Snapshot:
    inputs = model.processor(images=random_image(99), text="USER: <image>\nrate it ASSISTANT:", return_tensors="pt")
    with torch.no_grad():
        logits = model.model(**inputs).logits.clone()
    return Snapshot(logits, attention_state(model), model.model.training,
                    {k: v.detach().clone() for k, v in model.model.state_dict().items()})


def assert_unchanged(model: vl.LensModel, before: Snapshot) -> None:
    after = snapshot(model)
    assert after.state == before.state, f"hooks / attention implementation / registries changed: {after.state}"
    assert after.training == before.training
    assert torch.equal(after.logits, before.logits), "the model's logits on the fixed input changed"
    assert after.weights.keys() == before.weights.keys()
    assert all(torch.equal(after.weights[k], v) for k, v in before.weights.items()), "a weight changed"


def refuses(call: Callable[[], Any], names: str | Sequence[str], error: type[Exception] = vl.VlmLensError,
            model: vl.LensModel | None = None) -> Exception:
    """Run ``call``; it must raise ``error`` (a subclass of ``VlmLensError``), its message must contain each of
    ``names``, and ``model`` (if given) must be unchanged. Returns the error."""
    assert issubclass(error, vl.VlmLensError)
    before = snapshot(model) if model is not None else None
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for name in [names] if isinstance(names, str) else names:
        assert name in message, f"{name!r} is not named in the message: {message}"
    if model is not None:
        assert_unchanged(model, before)
    return info.value


def check(case: Case, ctx: Any) -> Exception:
    """Run one :class:`Case` against the area's context ``ctx`` (``ctx.model`` is checked when ``case.model``)."""
    return refuses(lambda: case.call(ctx), case.names, case.error, ctx.model if case.model else None)
