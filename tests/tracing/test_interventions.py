"""Interventions on LLaVA shapes (multi-head, grouped-query, multi-query, LLaVA-NeXT) against a hand-written
reference: a plain transformers forward with eager attention and hand-edited masks (knockout), forward hooks
(ablation, patching), a manual greedy loop without the KV cache (generation); and against vlm_lens's own plain
traces where an intervention must change nothing. Other families: tests/models/test_family_interventions.py and
tests/models/test_mplug_owl2_interventions.py."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPT, random_image
from interventions_reference import (
    at,
    greedy_without_cache,
    hooked_forward,
    inputs_with_answer,
    segment_positions,
    teacher_forced_inputs,
)
from transformers import AutoModelForImageTextToText

import vlm_lens as vl
from vlm_lens.testing import tiny_llava

ATOL = 1e-4


@pytest.fixture(scope="module")
def eagers(checkpoints):
    """Per shape, the checkpoint loaded by transformers with an eager decoder (the vision tower as traced)."""
    cache = {}

    def get(shape):
        if shape not in cache:
            cache[shape] = AutoModelForImageTextToText.from_pretrained(
                checkpoints[shape], attn_implementation={"text_config": "eager", "vision_config": "sdpa"}).eval()
        return cache[shape]
    return get


def everything(t_length: int) -> vl.Keep:
    return vl.Keep(query_positions=list(range(t_length)))


def traced(m, image, prompt, length=None, **kwargs):
    """A trace keeping every hidden state and the logits and attention rows of every position."""
    if length is None:
        length = len(vl.trace(m, image, prompt, keep=vl.Keep(layers=[0], attention=False),
                              generate=kwargs.get("generate", 0)).tokens)
    return vl.trace(m, image, prompt, keep=everything(length), **kwargs)


def layers_of(hf):
    return hf.model.language_model.layers


@pytest.mark.parametrize("shape", ["mha", "gqa", "mqa-cls", "next"])
def test_knockout_equals_eager_with_a_hand_edited_mask(models, eagers, shape):
    m, eager, image = models[shape], eagers(shape), random_image(5)
    base = vl.trace(m, image, PROMPT, generate=3)
    n = len(base.tokens)
    ko = [vl.knockout(["instruction", "response"], "image", layers=[0]),
          vl.knockout("response", ["system", "instruction"], layers=[-1], heads=[1, 2])]
    t = vl.trace(m, image, PROMPT, response=base, keep=everything(n), intervene=ko)
    image_pos = segment_positions(base, "image")
    queries = segment_positions(base, "instruction") + segment_positions(base, "response")
    other = segment_positions(base, "system") + segment_positions(base, "instruction")
    last = m.adapter.n_layers - 1
    ref = hooked_forward(eager, layers_of(eager), teacher_forced_inputs(m, [image], base), output_attentions=True,
                         knock={0: [(None, queries, image_pos)],
                                last: [([1, 2], segment_positions(base, "response"), other)]})
    torch.testing.assert_close(t.logits, ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(t.hidden, ref.hidden, atol=ATOL, rtol=0)
    rows = torch.stack([a for a in ref.attentions]).float()
    torch.testing.assert_close(t.attention, rows, atol=1e-5, rtol=0)
    plain = vl.trace(m, image, PROMPT, response=base, keep=everything(n))
    assert (t.logits - plain.logits).abs().max() > 1e-3  # the knockout changed the output: the test has teeth


def test_knocked_keys_hold_exactly_zero_mass(models):
    m, image = models["gqa"], random_image(6)
    base = vl.trace(m, image, PROMPT, generate=3)
    n = len(base.tokens)
    t = vl.trace(m, image, PROMPT, response=base, keep=everything(n),
                 intervene=[vl.knockout("response", "image", layers=[1], heads=[0, 3])])
    image_slice, response = base.spans["image"].slice, segment_positions(base, "response")
    knocked = t.attention[1][[0, 3]][:, response, image_slice]
    assert knocked.numel() and torch.all(knocked == 0)
    assert torch.all(t.attention[1][[1, 2]][:, response, image_slice].sum(-1) > 0)  # other heads still read it
    assert torch.all(t.attention[0][:, response, image_slice].sum(-1) > 0)  # and other layers
    torch.testing.assert_close(t.attention.sum(-1), torch.ones_like(t.attention.sum(-1)))


def test_knocking_out_keys_the_query_cannot_see_changes_nothing(models):
    m, image = models["mha"], random_image(7)
    base = vl.trace(m, image, PROMPT, generate=3)
    n = len(base.tokens)
    plain = vl.trace(m, image, PROMPT, response=base, keep=everything(n))
    t = vl.trace(m, image, PROMPT, response=base, keep=everything(n),
                 intervene=[vl.knockout("prompt", "response", layers=None),
                            vl.knockout("image", "instruction", layers=None, heads=[1])])
    assert torch.equal(t.logits, plain.logits) and torch.equal(t.hidden, plain.hidden)
    assert torch.equal(t.attention, plain.attention)


def test_generation_under_knockout_equals_a_manual_greedy_loop(models, eagers):
    m, eager, image = models["gqa"], eagers("gqa"), random_image(8)
    ko = vl.knockout(["system", "instruction", "response"], "image", layers=None)
    t = vl.trace(m, image, PROMPT, generate=6, intervene=[ko])
    segments = t.tokens.segment.tolist()

    def knock_for(length, prompt_length):
        labels = segments[:prompt_length] + ["response"] * (length - prompt_length)
        queries = [p for p, s in enumerate(labels) if s != "image"]
        image_pos = [p for p, s in enumerate(labels) if s == "image"]
        return {layer: [(None, queries, image_pos)] for layer in range(m.adapter.n_layers)}

    rendered = t.meta["rendered_prompt"]
    answer, logits = greedy_without_cache(m, eager, layers_of(eager),
                                          lambda ids: inputs_with_answer(m, [image], rendered, ids), 6,
                                          lambda ids: knock_for(t.prompt_length + len(ids), t.prompt_length))
    assert t.response_ids == answer
    torch.testing.assert_close(t.logits[:len(answer)], logits, atol=ATOL, rtol=0)  # the Trace is what generated it
    assert t.meta["interventions"][0]["same_rows_in_generation"] is True
    plain = vl.trace(m, image, PROMPT, generate=6)
    assert plain.response_ids != answer  # the knockout changed the answer: the comparison has teeth


@pytest.mark.parametrize("index", [0, 1, 2])
def test_ablation_equals_a_hand_written_hook(models, index):
    m, image = models["gqa"], random_image(9)
    base = vl.trace(m, image, PROMPT, generate=3)
    n, d = len(base.tokens), m.adapter.text_config.hidden_size
    image_pos, response = segment_positions(base, "image"), segment_positions(base, "response")
    vector = torch.randn(d, generator=torch.Generator().manual_seed(index))
    rows = torch.randn(len(image_pos), d, generator=torch.Generator().manual_seed(10 + index))
    cases = [(vl.ablate("image", index, "zero"), at(image_pos, lambda h: torch.zeros_like(h))),
             (vl.ablate("image", [index], "mean"), at(image_pos, lambda h: h.mean(0).expand_as(h))),
             (vl.ablate(response, index, vector), at(response, lambda h: vector.expand_as(h))),
             (vl.ablate("image", index, rows), at(image_pos, lambda h: rows))]
    inputs = teacher_forced_inputs(m, [image], base)
    for ablation, edit in cases:
        t = vl.trace(m, image, PROMPT, response=base, keep=everything(n), intervene=[ablation])
        ref = hooked_forward(m.model, m.adapter.layers, inputs, replace={index: edit})
        torch.testing.assert_close(t.logits, ref.logits, atol=ATOL, rtol=0)
        torch.testing.assert_close(t.hidden, ref.hidden, atol=ATOL, rtol=0)
    zeroed = vl.trace(m, image, PROMPT, response=base, intervene=[vl.ablate("image", index)])
    assert torch.all(zeroed.hidden[index, image_pos] == 0)  # the Trace shows the ablated values


def test_patch_equals_a_hand_written_hook(models, tmp_path):
    m = models["mha"]
    twin = vl.load(tiny_llava(tmp_path / "twin", layers=2, heads=4, kv_heads=4, seed=101))  # same shape, other weights
    image, other = random_image(11), random_image(12)
    base = vl.trace(m, image, PROMPT, generate=3)
    n = len(base.tokens)
    inputs = teacher_forced_inputs(m, [image], base)
    image_pos = segment_positions(base, "image")
    for source_model, source_image in ((m, other), (twin, image)):
        source = vl.trace(source_model, source_image, PROMPT, response=base)
        src = hooked_forward(source_model.model, source_model.adapter.layers,
                             teacher_forced_inputs(source_model, [source_image], base))
        for index in (0, 1, 2):
            t = vl.trace(m, image, PROMPT, response=base, keep=everything(n),
                         intervene=[vl.patch(source, "image", layers=index)])
            ref = hooked_forward(m.model, m.adapter.layers, inputs,
                                 replace={index: at(image_pos, lambda h: src.hidden[index, image_pos])})
            torch.testing.assert_close(t.logits, ref.logits, atol=ATOL, rtol=0)
            torch.testing.assert_close(t.hidden, ref.hidden, atol=ATOL, rtol=0)
            torch.testing.assert_close(t.hidden[index, image_pos], src.hidden[index, image_pos], atol=1e-5, rtol=0)


def test_patch_from_a_source_of_another_length_by_names(models):
    m, image = models["mha"], random_image(13)
    short = vl.trace(m, image, "rate it", generate=2)
    source = vl.trace(m, random_image(14), PROMPT, generate=2)
    assert len(source.tokens) != len(short.tokens)
    t = vl.trace(m, image, "rate it", response=short,
                 intervene=[vl.patch(source, "image", layers=[1], source_positions="image")])
    target_image, source_image = segment_positions(short, "image"), segment_positions(source, "image")
    torch.testing.assert_close(t.hidden[1, target_image], source.hidden[1, source_image], atol=1e-6, rtol=0)
    with pytest.raises(vl.VlmLensError, match="patch source is .* positions long.*source_positions"):
        vl.trace(m, image, "rate it", response=short, intervene=[vl.patch(source, "image", layers=[1])])


def test_a_batch_with_one_intervention_per_sample_equals_single_traces(models):
    m = models["gqa"]
    images = [random_image(15, (64, 32)), random_image(16), random_image(17, (40, 40))]
    prompts = ["rate it", PROMPT, PROMPT + " is it sharp?"]
    per_sample = [[vl.knockout("response", "image", layers=[0, 1])], None,
                  [vl.ablate("instruction", 1, "mean"), vl.knockout("instruction", "image", layers=[2], heads=[0])]]
    batch = vl.trace(m, images, prompts, generate=4, intervene=per_sample)
    assert len({len(t.tokens) for t in batch}) > 1  # left padded
    for t, image, prompt, items in zip(batch, images, prompts, per_sample):
        one = vl.trace(m, image, prompt, generate=4, intervene=items)
        assert t.response_ids == one.response_ids
        torch.testing.assert_close(t.logits, one.logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(t.hidden, one.hidden, atol=1e-5, rtol=0)
        torch.testing.assert_close(t.attention, one.attention, atol=1e-5, rtol=0)
        assert t.meta.get("interventions") == one.meta.get("interventions")


def test_a_given_response_is_traced_as_the_generated_one(models):
    m, image = models["next"], random_image(18)
    base = vl.trace(m, image, PROMPT, generate=4)
    again = vl.trace(m, image, PROMPT, response=base)
    by_ids = vl.trace(m, image, PROMPT, response=list(base.response_ids))
    assert again.tokens.equals(base.tokens) and by_ids.tokens.equals(base.tokens)
    torch.testing.assert_close(again.logits, base.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(again.hidden, base.hidden, atol=1e-6, rtol=0)
    assert again.meta["response_given"] is True and "response_given" not in base.meta


def test_the_trace_records_its_interventions_and_keeps_them_when_saved(models, tmp_path):
    m, image = models["mha"], random_image(19)
    t = vl.trace(m, image, PROMPT, generate=2,
                 intervene=[vl.knockout("response", "image", layers=[1], heads=[2]), vl.ablate([0, 1], 0)])
    records = t.meta["interventions"]
    assert [r["kind"] for r in records] == ["knockout", "ablation"]
    assert records[0]["resolved"]["queries"] == segment_positions(t, "response")
    assert records[0]["resolved"]["keys"] == segment_positions(t, "image")
    assert records[1]["resolved"] == {"positions": [0, 1]} and records[1]["value"] == "zero"
    back = vl.Trace.load(t.save(tmp_path / "t"), model=m)
    assert back.meta["interventions"] == records
    assert "interventions" not in vl.trace(m, image, PROMPT).meta


def test_a_model_running_eager_attention_is_knocked_out_alike(models, eagers):
    """Eager models get an additive mask and their rows from the returned weights: the same numbers as SDPA."""
    m, image = models["gqa"], random_image(20)
    eager = vl.wrap(eagers("gqa"), m.processor)
    base = vl.trace(m, image, PROMPT, generate=3)
    ko = [vl.knockout("response", "image", layers=[0, 2], heads=[1])]
    a = vl.trace(m, image, PROMPT, response=base, intervene=ko)
    b = vl.trace(eager, image, PROMPT, response=base, intervene=ko)
    torch.testing.assert_close(b.logits, a.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(b.attention, a.attention, atol=1e-5, rtol=0)
    assert torch.all(b.attention[[0, 2]][:, 1][:, 1:, base.spans["image"].slice] == 0)
    assert eager.adapter.text_config._attn_implementation == "eager"
