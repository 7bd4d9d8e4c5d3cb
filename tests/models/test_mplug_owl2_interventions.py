"""Interventions on vlm_lens's mPLUG-Owl2 port (modality-adaptive layers: visual and text tokens take their own
key/value projections and norms) against the hand-written reference of tests/interventions_reference.py, run on
the port loaded with eager attention: the mask its attention module receives (its 4th positional argument) is
edited by hand, its decoder layers are hooked by hand, and generation is a greedy loop without the KV cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from interventions_reference import (
    at,
    greedy_without_cache,
    hooked_forward,
    segment_positions,
)
from PIL import Image

import vlm_lens as vl

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mplug_owl2_tiny"
QUESTION = "How would you rate the quality of this image?"
ATOL = 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from vlm_lens.zoo.tokenizer import word_tokenizer

    folder = tmp_path_factory.mktemp("owl") / "mplug_owl2_tiny_words"
    shutil.copytree(FIXTURE, folder)
    word_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model(checkpoint) -> vl.LensModel:
    return vl.load(checkpoint)


@pytest.fixture(scope="module")
def eager(checkpoint) -> vl.LensModel:
    return vl.load(checkpoint, attn_implementation="eager")


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.open(FIXTURE / "image.png").convert("RGB")


def inputs_for(eager: vl.LensModel, image, answer) -> dict:
    """The port's own inputs of the question (one -200 per visual position) with ``answer`` appended."""
    adapter = eager.adapter
    encoded = adapter.encode([[image]], [adapter.format_prompt(QUESTION, 1)])
    ids = torch.cat([encoded.input_ids, torch.tensor([list(answer)], dtype=torch.long)], dim=1)
    return adapter.forward_inputs(ids, torch.ones_like(ids), encoded.model_inputs)


def reference(eager, image, answer, **kwargs):
    return hooked_forward(eager.model, eager.adapter.layers, inputs_for(eager, image, answer),
                          attention=lambda layer: layer.self_attn, mask_index=3, **kwargs)


def test_knockout_equals_eager_with_a_hand_edited_mask(model, eager, image):
    base = vl.trace(model, image, QUESTION, generate=3)
    n = len(base.tokens)
    image_pos, text = segment_positions(base, "image"), segment_positions(base, "instruction")
    response = segment_positions(base, "response")
    t = vl.trace(model, image, QUESTION, response=base, keep=vl.Keep(query_positions=list(range(n))),
                 intervene=[vl.knockout(["instruction", "response"], "image", layers=[0], heads=[1]),
                            vl.knockout("response", "instruction", layers=[1])])
    ref = reference(eager, image, base.response_ids, output_attentions=True,
                    knock={0: [([1], text + response, image_pos)], 1: [(None, response, text)]})
    torch.testing.assert_close(t.logits, ref.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(t.hidden, ref.hidden, atol=ATOL, rtol=0)
    torch.testing.assert_close(t.attention, torch.stack(ref.attentions).float(), atol=1e-5, rtol=0)
    assert torch.all(t.attention[0, 1][text + response][:, image_pos] == 0)
    plain = vl.trace(model, image, QUESTION, response=base)
    assert (t.logits[-len(response):] - plain.logits[-len(response):]).abs().max() > 1e-3


def test_generation_under_knockout_equals_a_manual_greedy_loop(model, eager, image):
    t = vl.trace(model, image, QUESTION, generate=4,
                 intervene=[vl.knockout(["system", "instruction", "response"], "image", layers=None)])
    segments, prompt_length = t.tokens.segment.tolist()[:t.prompt_length], t.prompt_length
    image_pos = [p for p, s in enumerate(segments) if s == "image"]

    def knock_for(answer):
        queries = [p for p, s in enumerate(segments) if s != "image"] + \
            list(range(prompt_length, prompt_length + len(answer)))
        return {layer: [(None, queries, image_pos)] for layer in range(model.adapter.n_layers)}

    answer, logits = greedy_without_cache(eager, eager.model, eager.adapter.layers,
                                          lambda ids: inputs_for(eager, image, ids), 4, knock_for,
                                          attention=lambda layer: layer.self_attn, mask_index=3)
    assert t.response_ids == answer
    torch.testing.assert_close(t.logits[:len(answer)], logits, atol=ATOL, rtol=0)


def test_ablation_and_patching_equal_hand_written_hooks(model, image):
    base = vl.trace(model, image, QUESTION, generate=3)
    image_pos = segment_positions(base, "image")
    mirrored = image.transpose(0)
    source = vl.trace(model, mirrored, QUESTION, response=base)
    source_ref = reference(model, mirrored, base.response_ids)
    for index in (0, 1, 2):
        cases = [(vl.ablate("image", index, "zero"), at(image_pos, lambda h: torch.zeros_like(h))),
                 (vl.patch(source, "image", index), at(image_pos, lambda h: source_ref.hidden[index, image_pos]))]
        for intervention, edit in cases:
            t = vl.trace(model, image, QUESTION, response=base, intervene=[intervention])
            ref = reference(model, image, base.response_ids, replace={index: edit})
            torch.testing.assert_close(t.logits, ref.logits[t.query_positions], atol=ATOL, rtol=0)
            torch.testing.assert_close(t.hidden, ref.hidden, atol=ATOL, rtol=0)
