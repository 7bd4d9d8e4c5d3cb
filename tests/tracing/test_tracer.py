"""trace(): generation then one teacher-forced pass equals step-by-step decoding; batches equal single runs;
subsets of layers / positions are slices of the full trace."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPT, random_image

import vlm_lens as vl


def test_response_is_what_generate_produces(model, image):
    t = vl.trace(model, image, PROMPT, generate=6)
    inputs = model.processor(images=image, text=t.meta["rendered_prompt"], return_tensors="pt")
    with torch.no_grad():
        out = model.model.generate(**inputs, max_new_tokens=6, do_sample=False,
                                   suppress_tokens=[model.adapter.image_token_id])
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    if 2 in new:  # eos ends the response, and is part of it
        new = new[:new.index(2) + 1]
    assert t.response_ids == new and len(new) > 0
    assert (t.tokens.segment.iloc[t.prompt_length:] == "response").all()
    assert t.spans["response"].slice == slice(t.prompt_length, len(t.tokens))
    # the logits at each query position predict the next token (greedy; the image placeholder is never generated)
    assert t.query_positions.tolist() == list(range(t.prompt_length - 1, len(t.tokens)))
    logits = t.logits.clone()
    logits[:, model.adapter.image_token_id] = float("-inf")
    assert logits[:-1].argmax(-1).tolist() == t.response_ids


def test_teacher_forced_states_equal_kv_cache_decoding(model, image):
    t = vl.trace(model, image, PROMPT, generate=5)
    n = model.adapter.n_layers
    inputs = model.processor(images=image, text=t.meta["rendered_prompt"], return_tensors="pt")
    steps = []
    with torch.no_grad():
        out = model.model(**inputs, use_cache=True, output_hidden_states=True)
        steps.append(out)
        for token in t.response_ids[:-1]:
            out = model.model(input_ids=torch.tensor([[token]]), cache=out.cache, use_cache=True,
                              output_hidden_states=True)
            steps.append(out)
    for k, out in enumerate(steps):
        pos = t.prompt_length - 1 + k
        for i in range(n):
            torch.testing.assert_close(t.hidden[i, pos], out.hidden_states[i][0, -1], atol=1e-4, rtol=0)
        torch.testing.assert_close(model.adapter.final_norm(t.hidden[n, pos]), out.hidden_states[n][0, -1],
                                   atol=1e-4, rtol=0)
        torch.testing.assert_close(t.logits[k], out.logits[0, -1], atol=1e-4, rtol=0)


def test_batch_equals_single_runs(model):
    prompts = [PROMPT, "rate it", "what is the overall quality of this picture ? describe it in one word"]
    images = [random_image(1, (64, 32)), random_image(2, (32, 64)), random_image(3, (45, 45))]
    batch = vl.trace(model, images, prompts, generate=4)
    for b, image, prompt in zip(batch, images, prompts):
        one = vl.trace(model, image, prompt, generate=4)
        assert b.tokens.equals(one.tokens)
        assert b.spans == one.spans
        assert torch.equal(b.query_positions, one.query_positions)
        torch.testing.assert_close(b.hidden, one.hidden, atol=1e-4, rtol=0)
        torch.testing.assert_close(b.attention, one.attention, atol=1e-4, rtol=0)
        torch.testing.assert_close(b.logits, one.logits, atol=1e-4, rtol=0)
    lengths = {len(t.tokens) for t in batch}
    assert len(lengths) == 3  # the batch really was padded


def test_one_trace_verb_for_one_prompt_and_for_a_batch(models, image):
    m = models["mha"]
    a = vl.trace(m, [image, None], [PROMPT, "rate it"])
    b = [vl.trace(m, image, PROMPT), vl.trace(m, None, "rate it")]
    for x, y in zip(a, b):
        assert x.tokens.equals(y.tokens)
        torch.testing.assert_close(x.hidden, y.hidden, atol=1e-4, rtol=1e-4)
    assert (a[1].tokens.segment != "image").all() and "image" not in a[1].spans
    with pytest.raises(vl.VlmLensError, match=r"vl.trace takes a list of prompts"):
        vl.trace_batch(m, [image], [PROMPT])
    with pytest.raises(vl.VlmLensError, match=r"call vl.trace\(model, image, prompt"):
        m.trace(image, PROMPT)


def test_layer_and_position_subsets_are_slices(models, image):
    m = models["gqa"]
    full = vl.trace(m, image, PROMPT, keep=vl.Keep(query_positions=[-1, 3]))
    part = vl.trace(m, image, PROMPT, keep=vl.Keep(query_positions=[-1, 3], layers=[0, -1], positions=[2, -1, 5],
                                                   attention=[1], dtype=torch.float64))
    assert part.layers == [0, 3] and part.positions.tolist() == [2, len(full.tokens) - 1, 5]
    assert part.hidden.dtype == torch.float64 and part.hidden.shape == (2, 3, 64)
    torch.testing.assert_close(part.hidden.float(), full.hidden[[0, 3]][:, [2, -1, 5]], atol=0, rtol=0)
    assert part.attention_layers == [1]
    torch.testing.assert_close(part.attention, full.attention[[1]], atol=0, rtol=0)
    assert part.query_positions.tolist() == [len(full.tokens) - 1, 3]
    assert part.lens(topk=2, positions=[-1]).layer.unique().tolist() == [0, 3]
    with pytest.raises(vl.VlmLensError, match="not kept"):
        part.lens(positions=[4])
    none = vl.trace(m, image, PROMPT, keep=vl.Keep(attention=False))
    assert none.attention is None and none.attention_layers == []


def test_sampling_is_seeded_and_leaves_global_rng_alone(models, image):
    m = models["mha"]
    state = torch.random.get_rng_state()
    runs = [vl.trace(m, image, PROMPT, generate=vl.Generation(8, do_sample=True, temperature=1.5, seed=s)).response_ids
            for s in (1, 1, 2, 3, 4)]
    assert torch.equal(state, torch.random.get_rng_state())
    assert runs[0] == runs[1]
    assert len({tuple(r) for r in runs}) > 1


def test_sampled_answers_do_not_depend_on_the_batch(models):
    m = models["gqa"]
    images = [random_image(i) for i in range(3)]
    sampled = vl.Generation(6, do_sample=True, temperature=1.3, top_p=0.9, seed=11)
    batch = vl.trace(m, images, [PROMPT] * 3, generate=sampled)
    for b, image in zip(batch, images):
        alone = vl.trace(m, image, PROMPT, generate=sampled)
        assert b.response_ids == alone.response_ids and b.meta["seed"] == 11
    per_sample = vl.trace(m, images, [PROMPT] * 3, generate=vl.Generation(6, do_sample=True, seed=[1, 2, 3]))
    assert [t.meta["seed"] for t in per_sample] == [1, 2, 3]
    fresh = vl.trace(m, images[0], PROMPT, generate=vl.Generation(2, do_sample=True))
    assert isinstance(fresh.meta["seed"], int)  # the seed drawn is recorded, so the answer can be reproduced
    again = vl.trace(m, images[0], PROMPT, generate=vl.Generation(2, do_sample=True, seed=fresh.meta["seed"]))
    assert again.response_ids == fresh.response_ids
    with pytest.raises(vl.VlmLensError, match="one int per prompt"):
        vl.trace(m, images, [PROMPT] * 3, generate=vl.Generation(2, do_sample=True, seed=[1, 2]))


def test_prefill_starts_the_answer(models, image):
    m = models["mha"]
    t = vl.trace(m, image, PROMPT, prefill="the quality of the image is", generate=2)
    assert t.meta["rendered_prompt"] == f"USER: <image>\n{PROMPT} ASSISTANT: the quality of the image is"
    prompt_tokens = t.tokens.iloc[:t.prompt_length]
    assert prompt_tokens.text.tolist()[-6:] == ["the", "quality", "of", "the", "image", "is"]
    assert (prompt_tokens.segment.iloc[-8:] == "system").all()  # "assistant :" + the prefill: not the user's words
    # a prompt that already ends with the prefill is left alone
    same = vl.trace(m, image, PROMPT, prefill="ASSISTANT:")
    assert same.meta["rendered_prompt"].endswith("? ASSISTANT:")


def test_text_of_tokens_and_answer(models, image):
    m = models["mha"]
    t = vl.trace(m, image, PROMPT, generate=3)
    assert t.tokens.text.iloc[0] == "<s>"
    words = t.tokens[t.tokens.segment == "instruction"].text.tolist()
    assert " ".join(words) == "how would you rate the quality of this image ?"
    assert t.answer == m.adapter.tokenizer.decode(t.response_ids, skip_special_tokens=True).strip()


def test_split_equals_stacking_and_releases_the_recorder_tensors():
    """Per-sample stacks of the stored layers (as torch.stack of slices would give), built layer by layer while
    the stored tensors are dropped, so that what is kept is not held twice."""
    from vlm_lens.tracing.tracer import _split

    generator = torch.Generator().manual_seed(0)
    stored = {layer: torch.randn(3, 7, 5, generator=generator) for layer in (0, 2, 5)}
    copy = {k: v.clone() for k, v in stored.items()}
    where = [(0, slice(7)), (1, slice(4)), (2, slice(2, 6))]
    out = _split(stored, [0, 2, 5], where)
    assert stored == {}
    for sample, index in enumerate(where):
        assert torch.equal(out[sample], torch.stack([copy[k][index] for k in (0, 2, 5)]))
