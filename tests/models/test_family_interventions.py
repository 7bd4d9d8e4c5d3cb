"""Interventions on Qwen2-VL (M-RoPE: the model computes 3-D positions from the whole sequence) and PaliGemma (a
bidirectional prefix: image and prompt attend to each other both ways, the answer is causal), against the same
hand-written reference as the LLaVA tests (tests/interventions_reference.py): eager attention with hand-edited
masks, hooks on the decoder layers, and a greedy loop without the KV cache."""

from __future__ import annotations

import torch
from families import family_fixtures, rows
from interventions_reference import (
    at,
    greedy_without_cache,
    hooked_forward,
    inputs_with_answer,
    segment_positions,
    teacher_forced_inputs,
)

import vlm_lens as vl

variant = rows("Qwen2-VL", "PaliGemma")
checkpoint, m, eager, single, batch = family_fixtures()

ATOL = 1e-4


def everything(trace) -> vl.Keep:
    return vl.Keep(query_positions=list(range(len(trace.tokens))))


def layers(hf_model):
    return vl.wrap(hf_model).adapter.layers


def test_knockout_equals_eager_with_a_hand_edited_mask(m, eager, single):
    images, prompt = single
    base = vl.trace(m, images, prompt, generate=3)
    image_pos, instruction = segment_positions(base, "image"), segment_positions(base, "instruction")
    response = segment_positions(base, "response")
    # image -> instruction: open only under PaliGemma's bidirectional prefix (a no-op for causal Qwen2-VL)
    ko = [vl.knockout("image", "instruction", layers=[0]),
          vl.knockout(["instruction", "response"], "image", layers=[-1], heads=[0, 2])]
    t = vl.trace(m, images, prompt, response=base, keep=everything(base), intervene=ko)
    last = m.adapter.n_layers - 1
    ref = hooked_forward(eager, layers(eager), teacher_forced_inputs(m, images, base), output_attentions=True,
                         knock={0: [(None, image_pos, instruction)],
                                last: [([0, 2], instruction + response, image_pos)]})
    torch.testing.assert_close(t.logits, ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(t.hidden, ref.hidden, atol=ATOL, rtol=0)
    torch.testing.assert_close(t.attention, torch.stack(ref.attentions).float(), atol=1e-5, rtol=0)
    assert torch.all(t.attention[-1][[0, 2]][:, response][..., image_pos] == 0)
    prefix = t.attention[0][:, image_pos][..., instruction]
    assert torch.all(prefix == 0)
    plain = vl.trace(m, images, prompt, response=base, keep=everything(base))
    if m.family == "paligemma":  # the prefix knockout alone moves the image tokens' states
        assert (plain.attention[0][:, image_pos][..., instruction]).sum() > 0
        alone = vl.trace(m, images, prompt, response=base, intervene=[ko[0]])
        assert (alone.hidden[1, image_pos] - plain.hidden[1, image_pos]).abs().max() > 1e-4
    assert (t.logits - plain.logits).abs().max() > 1e-3


def test_generation_under_knockout_equals_a_manual_greedy_loop(m, eager, single):
    images, prompt = single
    ko = vl.knockout(["instruction", "system", "response"], "image", layers=None)
    t = vl.trace(m, images, prompt, generate=5, intervene=[ko])
    segments, prompt_length = t.tokens.segment.tolist()[:t.prompt_length], t.prompt_length
    image_pos = [p for p, s in enumerate(segments) if s == "image"]

    def knock_for(answer):
        queries = [p for p, s in enumerate(segments) if s != "image"]
        queries += list(range(prompt_length, prompt_length + len(answer)))
        return {layer: [(None, queries, image_pos)] for layer in range(m.adapter.n_layers)}

    rendered = t.meta["rendered_prompt"]
    answer, logits = greedy_without_cache(m, eager, layers(eager),
                                          lambda ids: inputs_with_answer(m, images, rendered, ids), 5, knock_for)
    assert t.response_ids == answer
    torch.testing.assert_close(t.logits[:len(answer)], logits, atol=ATOL, rtol=0)


def test_ablation_and_patching_equal_hand_written_hooks(m, single):
    images, prompt = single
    base = vl.trace(m, images, prompt, generate=3)
    image_pos = segment_positions(base, "image")
    inputs = teacher_forced_inputs(m, images, base)
    other = [image.transpose(0) for image in images]  # the mirrored image: same size, same number of tokens
    source = vl.trace(m, other, prompt, response=base)
    assert len(source.tokens) == len(base.tokens)
    source_ref = hooked_forward(m.model, m.adapter.layers, teacher_forced_inputs(m, other, base))
    for index in (0, 1, m.adapter.n_layers):
        cases = [(vl.ablate("image", index, "mean"), at(image_pos, lambda h: h.mean(0).expand_as(h))),
                 (vl.patch(source, "image", index), at(image_pos, lambda h: source_ref.hidden[index, image_pos]))]
        for intervention, edit in cases:
            t = vl.trace(m, images, prompt, response=base, keep=everything(base), intervene=[intervention])
            ref = hooked_forward(m.model, m.adapter.layers, inputs, replace={index: edit})
            torch.testing.assert_close(t.logits, ref.logits, atol=ATOL, rtol=0)
            torch.testing.assert_close(t.hidden, ref.hidden, atol=ATOL, rtol=0)


def test_batched_interventions_equal_single_traces(m, batch):
    images, prompts = [b[0] for b in batch], [b[1] for b in batch]
    per_sample = [[vl.knockout("response", "image", layers=[0])], [vl.ablate("instruction", 1)], None]
    traces = vl.trace(m, images, prompts, generate=3, intervene=per_sample)
    for t, pictures, prompt, items in zip(traces, images, prompts, per_sample):
        one = vl.trace(m, pictures, prompt, generate=3, intervene=items)
        assert t.response_ids == one.response_ids
        torch.testing.assert_close(t.logits, one.logits, atol=ATOL, rtol=0)
        torch.testing.assert_close(t.hidden, one.hidden, atol=ATOL, rtol=0)
