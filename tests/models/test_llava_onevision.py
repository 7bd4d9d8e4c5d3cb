"""LLaVA-OneVision: anyres spans (base + unpadded, possibly shrunk crops with row newlines) against the model's own
packed image features, and the base-only layout of multi-image prompts (the invariants run in
test_invariants.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPT, random_image
from families import family_fixtures, rows
from invariants import feature, reference_inputs

import vlm_lens as vl

variant = rows("LLaVA-OneVision")
checkpoint, m, eager, single, batch = family_fixtures()


def model_features(m, images, text) -> list[int]:
    """Number of embeddings the model packs for each image (pack_image_features, newlines included)."""
    inputs = reference_inputs(m, images, text)
    with torch.no_grad():
        features = m.model.model.get_image_features(
            pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"],
            batch_num_images=inputs["batch_num_images"]).pooler_output
    return [int(f.shape[0]) for f in features]


class TestLlavaOnevision:

    @feature("spans")
    @pytest.mark.parametrize("size", [(50, 40), (64, 32), (32, 64), (100, 30), (16, 16)])
    def test_spans_follow_the_image_size(self, m, size):
        image = random_image(7, size)
        t = vl.trace(m, image, PROMPT, keep=vl.Keep(attention=False, layers=[0]))
        span = t.spans["image"]
        assert [len(span)] == model_features(m, [image], t.meta["rendered_prompt"])
        base, crops = span.layout
        assert (base.name, base.offset, base.rows, base.cols, base.newline) == ("base", 0, 4, 4, False)
        assert crops.name == "crops" and crops.newline and crops.offset == 16 and span.grid == (4, 4)
        width, height = size
        if width > height:
            assert crops.cols > crops.rows
        elif height > width:
            assert crops.rows > crops.cols

    @feature("spans")
    def test_crops_are_shrunk_past_the_aspect_ratio_budget(self, m):
        """anyres_max_2 with 4x4 patches per crop: a 2x2-crop image (8x8 patches) is shrunk by sqrt(2)."""
        image = random_image(8, (32, 32))
        t = vl.trace(m, image, PROMPT, keep=vl.Keep(attention=False, layers=[0]))
        crops = t.spans["image"].layout[1]
        assert (crops.rows, crops.cols) == (5, 5)
        assert [len(t.spans["image"])] == model_features(m, [image], t.meta["rendered_prompt"])

    @feature("multi_image")
    def test_several_images_get_the_base_grid_and_one_newline(self, m):
        images = [random_image(1, (64, 32)), random_image(2, (20, 60)), random_image(3)]
        t = vl.trace(m, images, "rate the quality of this image", keep=vl.Keep(attention=False, layers=[0]))
        spans = t.image_spans
        assert [s.image_index for s in spans] == [0, 1, 2]
        assert all(len(s) == 17 and s.grid == (4, 4) and s.layout[1].name == "newline" for s in spans)
        assert model_features(m, images, t.meta["rendered_prompt"]) == [17, 17, 17]
        assert (t.tokens.segment == "image").sum() == 51
