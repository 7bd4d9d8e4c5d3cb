"""Instability: sampled answers depend on (seed, sample, repeat) only — not on the batch —, level changes and entropy
follow their definitions, and the candidate-set counts equal a lens computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import random_image
from forced_answers import forced_trace

from vlm_lens.biqa.answer import locate
from vlm_lens.biqa.instability import Instability, candidate_set, level_changes
from vlm_lens.biqa.vocabulary import ANSWER_PREFIX, LEVELS, QALIGN_PROMPT
from vlm_lens.core.errors import VlmLensError
from vlm_lens.core.sampling import derive_seed
from vlm_lens.runs.datasets import from_images
from vlm_lens.runs.engine import run
from vlm_lens.runs.reducers import TraceRequest, trace_samples


def test_sampling_is_independent_of_the_batch(models):
    m = models["gqa"]
    images = [random_image(40 + k, (30 + 10 * k, 40)) for k in range(2)]
    request = TraceRequest(QALIGN_PROMPT, ANSWER_PREFIX, generate=4, repeats=2, sampled=True, temperature=2.0,
                           seed=11)
    one = trace_samples(m, images, ["a", "b"], request, batch_size=1)
    many = trace_samples(m, images, ["a", "b"], request, batch_size=4)
    for sample_id, x, y in zip("ab", one, many):
        assert [t.response_ids for t in x] == [t.response_ids for t in y]
        assert [t.meta["seed"] for t in x] == [derive_seed(11, sample_id, r) for r in range(2)]
    assert len({tuple(t.response_ids) for traces in one for t in traces}) > 2  # sampling does sample
    greedy = trace_samples(m, images, ["a", "b"], TraceRequest(QALIGN_PROMPT, ANSWER_PREFIX, generate=4),
                           batch_size=2)
    nucleus = trace_samples(m, images, ["a", "b"],
                            TraceRequest(QALIGN_PROMPT, ANSWER_PREFIX, generate=4, repeats=2, sampled=True,
                                         top_p=1e-9), batch_size=4)
    for g, n in zip(greedy, nucleus):  # top-p that keeps one token is greedy decoding
        assert [t.response_ids for t in n] == [g[0].response_ids] * 2


def test_level_changes_follow_their_definition(models):
    m = models["mha"]
    image = random_image(8)
    words = ["good", "good", "poor", None]
    traces = [forced_trace(m, image, f"the quality of the image is {w} ." if w else "cat .") for w in words]
    row = level_changes(traces).iloc[0]
    assert (row.n_repeats, row.n_found, row.n_distinct, row.changed) == (4, 3, 2, True)
    assert row.entropy_bits == pytest.approx(-(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3)))
    assert row.levels == '["good", "good", "poor", null]'
    same = level_changes(traces[:2]).iloc[0]
    assert same.changed == False and same.entropy_bits == 0.0  # noqa: E712 - a numpy bool
    assert level_changes(traces[2:]).iloc[0].changed is None  # one level found: nothing to compare


def test_candidate_set_equals_lens_by_hand(models):
    m = models["gqa"]
    image = random_image(9)
    traces = [forced_trace(m, image, f"{d} . the quality of the image is {w} .")
              for d, w in (("noisy", "poor"), ("sharp", "good"), ("dark", "bad"), ("cat", "fair"))]
    table = candidate_set(traces, topk=3)
    ids = [m.adapter.tokenizer.convert_tokens_to_ids(w) for w in LEVELS]
    for layer, row in table.set_index("layer").iterrows():
        top1, topk, mass = set(), set(), []
        for t in traces:
            pos = locate(t).decision_pos
            h = t.hidden[t.layers.index(layer), t.positions.tolist().index(pos)]
            with torch.no_grad():
                p = torch.softmax(m.model.lm_head(m.model.model.language_model.norm(h)).double(), -1)
            top1.add(int(p.argmax()))
            topk |= set(p.topk(3).indices.tolist())
            mass.append(float(p[ids].sum()))
        assert (row.distinct_top1, row.distinct_topk, row.n) == (len(top1), len(topk), 4)
        assert row.level_mass == pytest.approx(np.mean(mass), abs=1e-5)


def test_run_is_batch_independent_and_summarises_its_samples(models):
    m = models["mha"]
    ds = from_images([random_image(50 + k, (36, 30 + 7 * k)) for k in range(3)])
    analysis = lambda: [Instability(k=3, temperature=1.5, seed=2)]  # noqa: E731
    a = run(m, ds, analysis(), batch_size=2, progress=False)
    b = run(m, ds, analysis(), batch_size=9, progress=False)
    for name in ("instability.samples", "instability.repeats"):
        pd.testing.assert_frame_equal(a[name], b[name])
    pd.testing.assert_frame_equal(a["instability.layers"], b["instability.layers"], atol=1e-6)
    samples, summary = a["instability.samples"], a["instability.summary"].iloc[0]
    compared = samples.changed.dropna().astype(bool)
    assert summary.n_images == 3 and summary.n_compared == len(compared)
    if len(compared):
        assert summary.pct_changed == pytest.approx(100 * compared.mean())
    repeats = a["instability.repeats"]
    assert repeats[["temperature", "top_p"]].drop_duplicates().values.tolist() == [[1.5, 1.0]]
    assert repeats.seed.tolist() == [derive_seed(2, i, r) for i in ds.table().id for r in range(3)]


def test_bad_settings_are_refused():
    with pytest.raises(VlmLensError, match="at least 2"):
        Instability(k=1)
    with pytest.raises(VlmLensError, match="temperature > 0"):
        Instability(temperature=0.0)
    with pytest.raises(VlmLensError, match="same answer every time"):
        TraceRequest("q", repeats=3)
