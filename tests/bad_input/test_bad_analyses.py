"""Bad arguments of the analyses (Quality, Attention, Instability, Grounding): refused when the analysis is built —
not at the first batch of a long run, and never coerced (``prefill="False"`` is not True, ``generate=2.5`` is not
2, a string of level words is not its letters)."""

from __future__ import annotations

import pytest
from refusal import Case, check, params

from vlm_lens.biqa.attention import Attention
from vlm_lens.biqa.grounding import Grounding
from vlm_lens.biqa.instability import Instability
from vlm_lens.biqa.quality import Quality


def _built(name, build, names):
    return Case(name, lambda ctx: build(), names)


CASES = [
    _built("quality-prefill-text", lambda: Quality(prefill="False"), ["prefill='False'", "True or False"]),
    _built("quality-lens-text", lambda: Quality(lens="no"), ["lens='no'"]),
    _built("quality-generate-float", lambda: Quality(generate=2.5), ["generate=2.5"]),
    _built("quality-generate-negative", lambda: Quality(generate=-3), ["generate=-3", ">= 0"]),
    _built("quality-n-boot-text", lambda: Quality(n_boot="x"), ["n_boot='x'"]),
    _built("quality-n-boot-negative", lambda: Quality(n_boot=-1), ["n_boot=-1"]),
    _built("quality-seed-float", lambda: Quality(seed=1.5), ["seed=1.5"]),
    _built("quality-levels-one-string", lambda: Quality(levels="good,bad", weights=[1, 0]),
           ["levels='good,bad'", "list of words"]),
    _built("quality-levels-one-word", lambda: Quality(levels=["good"], weights=[1]), ["at least two level words"]),
    _built("quality-levels-and-weights-differ", lambda: Quality(levels=["good", "bad"], weights=[1, 0, 3]),
           ["one weight per word"]),
    _built("quality-weight-text", lambda: Quality(levels=["good", "bad"], weights=["a", "b"]), ["weights[0]='a'"]),
    _built("quality-weight-nan", lambda: Quality(levels=["good", "bad"], weights=[1, float("nan")]),
           ["weights[1]=nan", "finite"]),
    _built("quality-weights-a-name-of-no-set", lambda: Quality(weights="1-10"), ["weights='1-10'"]),
    _built("quality-prompt-none", lambda: Quality(prompt=None), ["prompt=None", "string"]),
    _built("quality-good-poor-one-string", lambda: Quality(good_poor="good"), ["good_poor='good'"]),
    _built("attention-query-unknown", lambda: Attention(query="x"), ["query='x'", "'decision'"]),
    _built("attention-prefill-text", lambda: Attention(prefill="yes"), ["prefill='yes'"]),
    _built("attention-generate-negative", lambda: Attention(generate=-1), ["generate=-1"]),
    _built("attention-levels-empty-word", lambda: Attention(levels=["good", ""]), ["'' is not a word"]),
    _built("instability-one-answer", lambda: Instability(k=1), ["k=1", "at least 2"]),
    _built("instability-k-text", lambda: Instability(k="5"), ["k='5'"]),
    _built("instability-temperature-text", lambda: Instability(temperature="1"), ["temperature='1'"]),
    _built("instability-temperature-zero", lambda: Instability(temperature=0), ["temperature > 0"]),
    _built("instability-top-p-above-one", lambda: Instability(top_p=2), ["0 < top_p <= 1"]),
    _built("instability-seed-text", lambda: Instability(seed="x"), ["seed='x'"]),
    _built("grounding-no-generation", lambda: Grounding(generate=0), ["generate=0", "generated description"]),
    _built("grounding-one-fold", lambda: Grounding(folds=1), ["folds=1", ">= 2"]),
    _built("grounding-seed-text", lambda: Grounding(seed="x"), ["seed='x'"]),
    _built("grounding-l2-negative", lambda: Grounding(l2=-1.0), ["l2=-1.0"]),
]


@pytest.mark.parametrize("case", params(CASES))
def test_refused(case, ctx):
    check(case, ctx)
