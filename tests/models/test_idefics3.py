"""Idefics3 / SmolVLM: tiled images with row/column markers (tiles follow the image's shape), the global view,
and several images per prompt (the family-independent invariants run in test_invariants.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPT, random_image
from families import family_fixtures, rows
from invariants import feature, reference_inputs

import vlm_lens as vl

variant = rows("Idefics3", "SmolVLM")
checkpoint, m, eager, single, batch = family_fixtures()


def model_features(m, images, text) -> int:
    inputs = reference_inputs(m, images, text)
    with torch.no_grad():
        features = m.model.model.get_image_features(inputs["pixel_values"], inputs["pixel_attention_mask"])
    features = getattr(features, "pooler_output", features)
    features = features if isinstance(features, (list, tuple)) else [features]
    return sum(int(f.numel() // f.shape[-1]) for f in features)  # embeddings, whatever the grouping


class TestIdefics3:

    @feature("spans")
    @pytest.mark.parametrize("size, tiles", [((64, 32), (1, 2)), ((30, 60), (2, 1)), ((50, 40), (2, 2))])
    def test_tiles_follow_the_image_shape(self, m, size, tiles):
        image = random_image(5, size)
        t = vl.trace(m, image, PROMPT, keep=vl.Keep(attention=False, layers=[0]))
        span = t.spans["image"]
        rows, cols = tiles
        names = ["base"] + [f"crop_{r}_{c}" for r in range(1, rows + 1) for c in range(1, cols + 1)]
        assert [block.name for block in span.layout] == names
        assert span.layout[0].offset == len(span) - 4 and span.layout[1].offset == 0  # the global view comes last
        assert all((block.rows, block.cols) == (2, 2) for block in span.layout) and span.grid == (2, 2)
        expected = model_features(m, [image], t.meta["rendered_prompt"])
        assert (t.tokens.segment == "image").sum() == 4 * len(names) == expected
        texts = t.tokens.text.tolist()
        for block in span.layout:  # each block follows its own marker
            marker = texts[span.start + block.offset - 1]
            assert marker == ("<global-img>" if block.name == "base" else
                              "<row_{}_col_{}>".format(*block.name.split("_")[1:]))
            assert set(t.tokens.segment[span.start + block.offset:span.start + block.offset + 4]) == {"image"}

    @feature("spans")
    def test_unsplit_image_is_the_global_view_only(self, m):
        image_processor = m.processor.image_processor
        image_processor.do_image_splitting = False
        try:
            t = vl.trace(m, random_image(6, (50, 40)), PROMPT, keep=vl.Keep(attention=False, layers=[0]))
        finally:
            image_processor.do_image_splitting = True
        span = t.spans["image"]
        assert [(b.name, b.offset) for b in span.layout] == [("base", 0)] and len(span) == 4

    @feature("multi_image")
    def test_two_images_with_different_tilings(self, m):
        t = vl.trace(m, [random_image(1, (64, 32)), random_image(2, (50, 40))], "rate the quality of this image",
                     keep=vl.Keep(attention=False, layers=[0]))
        first, second = t.spans["image"], t.spans["image_1"]
        assert (first.image_index, second.image_index) == (0, 1)
        assert [b.name for b in first.layout] == ["base", "crop_1_1", "crop_1_2"]
        assert [b.name for b in second.layout] == ["base", "crop_1_1", "crop_1_2", "crop_2_1", "crop_2_2"]
        assert first.stop < second.start
