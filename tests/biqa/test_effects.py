"""The BIQA position names and the effect analyses on the zoo checkpoints: "decision" and "description" mean what
answer.locate says, at every generation step and in the teacher-forced pass; each effect row equals the same
intervention traced by hand and scored by t.quality(); a checkpoint patched into itself changes nothing; reducers
merge like the runs of ranks; vl.compare of a run with itself differs by nothing."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import vlm_lens as vl
from vlm_lens import zoo
from vlm_lens.biqa.answer import locate
from vlm_lens.biqa.effects import KnockoutEffects, windows
from vlm_lens.biqa.patching import PatchingEffects
from vlm_lens.biqa.positions import decision, decision_position, description
from vlm_lens.core.spans import Span
from vlm_lens.runs.datasets import from_images
from vlm_lens.runs.reducers import trace_samples
from vlm_lens.tracing.editing import InterventionWarning
from vlm_lens.tracing.positions import _RESOLVERS, SequenceView, register_position

PROMPT = zoo.PROMPTS[0]


@pytest.fixture(scope="module")
def one():
    return vl.load("zoo:tiny-biqa-one-stage")


@pytest.fixture(scope="module")
def two():
    return vl.load("zoo:tiny-biqa-two-stage")


@pytest.fixture(scope="module")
def images():
    return zoo.synthetic(3, seed=3)[0]


@pytest.fixture(scope="module")
def base(two, images):
    return vl.trace(two, images[0], PROMPT, generate=48)


def partial(trace, length: int) -> SequenceView:
    """What a generation step that feeds position ``length - 1`` sees."""
    full = SequenceView.of(trace)
    return SequenceView(full.ids[:length], full.segments[:length], full.spans, full.prompt_length, False,
                        trace.model)


def test_decision_and_description_at_every_generation_step_and_in_the_teacher_forced_pass(base):
    layout = locate(base)
    assert layout.level is not None and decision(SequenceView.of(base)) == [layout.decision_pos]
    assert description(SequenceView.of(base)) == layout.description
    for length in range(base.prompt_length, len(base.tokens)):
        view, newest = partial(base, length), length - 1
        if newest < layout.decision_pos:
            assert decision(view) == []  # the level word is not due yet
            so_far = Span(base.prompt_length, length) if length > base.prompt_length else None
            assert description(view) == so_far  # the response so far
        else:
            assert decision(view) == [layout.decision_pos]  # due now (newest == predict_pos), or already past
            assert description(view) == layout.description


def test_decision_is_the_last_prompt_position_of_a_prefilled_answer(two, images):
    said = vl.trace(two, images[1], PROMPT, generate=48).answer  # "<description>. the quality of the image is <level>."
    prefill = said[:said.index(vl.biqa.ANSWER_PREFIX.lower()) + len(vl.biqa.ANSWER_PREFIX)]
    t = vl.trace(two, images[1], PROMPT, prefill=prefill, generate=2)
    assert t.response_ids[0] in vl.biqa.level_token_ids(two.adapter.tokenizer, vl.biqa.LEVELS)
    assert decision_position(t) == t.prompt_length - 1
    assert decision(partial(t, t.prompt_length)) == [t.prompt_length - 1]  # due at the first generation step


def test_knocking_out_the_named_decision_while_generating_equals_its_position(two, images):
    base = vl.trace(two, images[2], PROMPT, generate=48)
    position = decision_position(base)
    named = vl.trace(two, images[2], PROMPT, generate=48,
                     intervene=[vl.knockout("decision", "description", layers=None)])
    explicit = vl.trace(two, images[2], PROMPT, generate=48,
                        intervene=[vl.knockout([position], "description", layers=None)])
    assert named.response_ids == explicit.response_ids
    torch.testing.assert_close(named.logits, explicit.logits, atol=0, rtol=0)
    assert named.meta["interventions"][0]["resolved"]["queries"] == [position]
    assert named.meta["interventions"][0]["same_rows_in_generation"] is True


def test_a_name_whose_rows_differ_while_generating_is_warned_about(two, images):
    def newest(view):  # every generation step's newest position, but only the last one in the full sequence
        return [len(view) - 1]

    register_position("newest_position_for_test", newest)
    try:
        with pytest.warns(InterventionWarning, match="acted on other positions while the answer was generated"):
            t = vl.trace(two, images[0], PROMPT, generate=4,
                         intervene=[vl.knockout("newest_position_for_test", "image", layers=[0])])
        assert t.meta["interventions"][0]["same_rows_in_generation"] is False
    finally:
        _RESOLVERS.pop("newest_position_for_test")


def test_registering_a_taken_name_is_refused():
    with pytest.raises(vl.VlmLensError, match="'image' is a segment or span name"):
        register_position("image", lambda view: [0])
    with pytest.raises(vl.VlmLensError, match="'decision' is already registered"):
        register_position("decision", lambda view: [0])


def test_windows():
    assert windows(8, None, None) == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert windows(8, 3, 3) == [(0, 1, 2), (3, 4, 5), (5, 6, 7)]  # the last window ends at the last layer
    assert windows(2, None, None) == [(0,), (1,)]
    with pytest.raises(vl.VlmLensError, match="window=9, stride=None: expected 1 <= window <= 8"):
        windows(8, 9, None)


def _traced(model, images, reducer):
    return trace_samples(model, images, [str(k) for k in range(len(images))], reducer.request(), len(images))


def _samples(images):
    return list(from_images(images, [3.0] * len(images)))


def test_knockout_rows_equal_the_intervention_traced_by_hand(two, images):
    reducer = KnockoutEffects(segments=["image", "description"], window=4, prompt=PROMPT)
    traced = _traced(two, images, reducer)
    reducer.update_batch(_samples(images), traced, images=images)
    table = reducer.result()["samples"]
    assert len(table) == len(images) * 2 * 2
    for row in table.sample(4, random_state=0).itertuples():
        base = traced[int(row.index)][0]
        position, layout = decision_position(base), locate(base)
        keys = list(range(layout.description.start, layout.description.stop)) if row.segment == "description" \
            else [p for p, s in enumerate(base.tokens.segment) if s == "image"]
        hand = vl.trace(two, images[int(row.index)], PROMPT, response=base,
                        intervene=[vl.knockout([position], keys, layers=list(range(row.first - 1, row.last)))])
        before, after = base.quality().iloc[0], hand.quality().iloc[0]
        assert row.score_base == pytest.approx(before.score, abs=1e-9)
        assert row.d_score == pytest.approx(after.score - before.score, abs=1e-5)
        assert row.level == after.level and row.flipped == (after.level != before.level)
        assert row.n_keys == len(keys)
    effects = reducer.result()["effects"]
    assert list(effects.segment.unique()) == ["image", "description"] and set(effects.n) == {len(images)}
    assert effects.d_score.tolist() == pytest.approx(table.groupby(["segment", "first"], sort=False)
                                                     .d_score.mean().tolist())


def test_reducers_merge_like_the_ranks_of_a_run(two, images):
    whole = KnockoutEffects(segments=["description"], window=8, prompt=PROMPT)
    traced = _traced(two, images, whole)
    samples = _samples(images)
    whole.update_batch(samples, traced, images=images)
    first, second = whole.fresh(), whole.fresh()
    first.update_batch(samples[:1], traced[:1], images=images[:1])
    second.update_batch(samples[1:], traced[1:], images=images[1:])
    merged = first.merge(second).result()
    for name, table in whole.result().items():
        pd.testing.assert_frame_equal(merged[name], table, obj=name)


def test_a_checkpoint_patched_into_itself_changes_nothing(two, images):
    reducer = PatchingEffects(two, segments=["image", "decision", "description"], layers=[0, 4, 8], prompt=PROMPT)
    reducer.update_batch(_samples(images[:2]), _traced(two, images[:2], reducer), images=images[:2])
    table = reducer.result()["samples"]
    assert len(table) == 2 * 3 * 3
    assert (table.d_score == 0).all() and not table.flipped.any() and table.to_source.all()
    assert table.recovered.isna().all()  # no gap to recover


def test_patching_rows_equal_the_patch_traced_by_hand(one, two, images):
    reducer = PatchingEffects(one, segments=["decision"], layers=[2], prompt=PROMPT)
    traced = _traced(two, images[:1], reducer)
    reducer.update_batch(_samples(images[:1]), traced, images=images[:1])
    for row in reducer.result()["samples"].itertuples():
        base = traced[int(row.index)][0]
        source = vl.trace(one, images[int(row.index)], PROMPT, generate=48)
        hand = vl.trace(two, images[int(row.index)], PROMPT, response=base,
                        intervene=[vl.patch(source, [decision_position(base)], [2],
                                            source_positions=[decision_position(source)])])
        target, theirs, after = (t.quality().iloc[0] for t in (base, source, hand))
        assert row.score_source == pytest.approx(theirs.score, abs=1e-6)  # the source was traced in a batch
        assert row.d_score == pytest.approx(after.score - target.score, abs=1e-5)
        assert row.level_source == theirs.level and row.to_source == (after.level == theirs.level)
        gap = theirs.score - target.score
        if abs(gap) >= 0.25:
            assert row.recovered == pytest.approx((after.score - target.score) / gap, abs=1e-4)


def test_runs_compare_and_a_run_compared_with_itself_differs_by_nothing(one, two, images, tmp_path):
    ds = from_images(images[:2], [2.0, 3.0])
    make = lambda other: [KnockoutEffects(segments=["image", "description"], window=8, prompt=PROMPT),  # noqa: E731
                          PatchingEffects(other, segments=["decision"], layers=[8], prompt=PROMPT)]
    runs = {"one-stage": vl.run(one, ds, make(two), out=tmp_path / "one", progress=False),
            "two-stage": vl.run(two, ds, make(one), out=tmp_path / "two", progress=False)}
    same = vl.compare({"a": runs["one-stage"], "again": runs["one-stage"]}, n_boot=10)
    for table in ("knockout_differences", "patching_differences"):
        assert len(same[table]) and same[table]["diff"].abs().max() == 0 and same[table].p.eq(1.0).all()
    both = vl.compare(runs, n_boot=10)
    ko = both["knockout"]
    mine = runs["two-stage"]["knockout.effects"]
    theirs = ko[ko.run == "two-stage"].merge(mine, on=["segment", "window"], suffixes=("", "_run"))
    assert np.allclose(theirs.d_score, theirs.d_score_run) and len(theirs) == len(mine)
    assert set(both["knockout_differences"].quantity) == {"d_score", "abs_d_score", "d_logp", "flipped"}


def test_bad_arguments_of_the_analyses(one):
    with pytest.raises(vl.VlmLensError, match=r"segments='image': expected a list of position names"):
        KnockoutEffects(segments="image")
    with pytest.raises(vl.VlmLensError, match=r"window=0: expected a number of decoder layers >= 1"):
        KnockoutEffects(window=0)
    with pytest.raises(vl.VlmLensError, match=r"PatchingEffects\(source=...\): expected the checkpoint"):
        PatchingEffects("zoo:tiny-biqa-one-stage")
    with pytest.raises(vl.VlmLensError, match=r"layers=\[9\]: expected hidden indices 0..8"):
        PatchingEffects(one, layers=[9])
    with pytest.raises(vl.VlmLensError, match="needs their images: run it with vl.run"):
        KnockoutEffects().update(None, [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert KnockoutEffects().fresh().config() == KnockoutEffects().config()
