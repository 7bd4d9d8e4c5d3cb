"""LLaVA-1.5 / LLaVA-NeXT adapters: segments, image spans and their grids, against the processor's own token
counts and the model's own image features."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPT, random_image

import vlm_lens as vl


def processor_image_tokens(m, image, text):
    ids = m.processor(images=image, text=text, return_tensors="pt")["input_ids"][0]
    return int((ids == m.adapter.image_token_id).sum())


def model_image_features(m, image):
    """Number of embeddings the model itself produces for one image (NeXT's get_image_features packs them)."""
    inputs = m.processor(images=image, text="USER: <image>\nrate it ASSISTANT:", return_tensors="pt")
    with torch.no_grad():
        features = m.model.model.get_image_features(
            pixel_values=inputs["pixel_values"], image_sizes=inputs.get("image_sizes"),
            vision_feature_layer=m.model.config.vision_feature_layer,
            vision_feature_select_strategy=m.model.config.vision_feature_select_strategy).pooler_output
    return int(features[0].shape[0])


def test_rendered_prompt_and_segments(models, image):
    m = models["mha"]
    t = vl.trace(m, image, PROMPT)
    assert t.meta["rendered_prompt"] == f"USER: <image>\n{PROMPT} ASSISTANT:"
    segments = t.tokens.segment.tolist()
    n_image = 16  # 32 px / patch 8 = 4 x 4, CLS dropped
    assert segments == ["system"] * 3 + ["image"] * n_image + ["instruction"] * 10 + ["system"] * 2
    assert t.tokens.text[t.tokens.segment == "system"].tolist() == ["<s>", "user", ":", "assistant", ":"]
    assert t.spans["image"].slice == slice(3, 3 + n_image) and t.spans["image"].grid == (4, 4)
    assert t.spans["instruction"].slice == slice(19, 29)
    assert t.spans["prompt"].slice == slice(0, len(t.tokens))


def test_cls_kept_with_full_strategy(models, image):
    m = models["mqa-cls"]
    t = vl.trace(m, image, PROMPT)
    span = t.spans["image"]
    assert len(span) == 17 == processor_image_tokens(m, image, t.meta["rendered_prompt"])
    assert span.grid == (4, 4) and span.layout[0].offset == 1 and span.layout[0].length == 16
    assert model_image_features(m, image) == 17


def test_placeholder_in_prompt_keeps_its_place(models, image):
    m = models["mha"]
    t = vl.trace(m, image, "describe <image> in one word")
    assert t.meta["rendered_prompt"] == "USER: describe <image> in one word ASSISTANT:"
    seg = t.tokens.segment.tolist()
    start = t.spans["image"].start
    assert seg[start - 1] == "instruction" and seg[t.spans["image"].stop] == "instruction"
    assert t.tokens.text[t.tokens.segment == "instruction"].tolist() == ["describe", "in", "one", "word"]
    assert t.spans["instruction"].start < start < t.spans["instruction"].stop


def test_two_images_in_one_prompt(models):
    m = models["gqa"]
    t = vl.trace(m, [random_image(1), random_image(2)], "rate the quality of this image")
    assert t.meta["rendered_prompt"].startswith("USER: <image>\n<image>\n")
    first, second = t.spans["image"], t.spans["image_1"]
    assert (first.image_index, second.image_index) == (0, 1)
    assert len(first) == len(second) == 16 and first.stop == second.start  # "\n" is no token here
    assert [s.image_index for s in t.image_spans] == [0, 1]
    assert (t.tokens.segment == "image").sum() == 32


@pytest.mark.parametrize("size", [(64, 32), (32, 64), (40, 40), (100, 30)])
def test_next_spans_follow_the_image_size(models, size):
    m = models["next"]
    image = random_image(7, size)
    t = vl.trace(m, image, PROMPT)
    span = t.spans["image"]
    assert len(span) == processor_image_tokens(m, image, t.meta["rendered_prompt"]) == model_image_features(m, image)
    base, crops = span.layout
    assert (base.name, base.offset, base.rows, base.cols, base.newline) == ("base", 0, 4, 4, False)
    assert crops.name == "crops" and crops.newline and crops.offset == 16
    assert len(span) == 16 + crops.rows * (crops.cols + 1)
    width, height = size
    if width > height:
        assert crops.cols > crops.rows
    elif height > width:
        assert crops.rows > crops.cols


def test_next_token_count_varies(models):
    m = models["next"]
    counts = {len(vl.trace(m, random_image(0, s), PROMPT).spans["image"]) for s in [(64, 32), (40, 40), (100, 30)]}
    assert len(counts) == 3
