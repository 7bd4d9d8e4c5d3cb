"""Qwen2-VL / Qwen2.5-VL: dynamic-resolution spans with the 2x2-merged grid, several images per prompt, and M-RoPE
positions (test_invariants.py proves rows == eager weights under them, with no Qwen-specific code in capture)."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPT, random_image
from families import family_fixtures, rows
from invariants import feature, reference_inputs

import vlm_lens as vl

variant = rows("Qwen2-VL", "Qwen2.5-VL")
checkpoint, m, eager, single, batch = family_fixtures()


class TestQwen2VL:

    @feature("spans")
    @pytest.mark.parametrize("size", [(50, 40), (64, 32), (24, 56), (48, 48)])
    def test_grid_follows_the_image_size_and_the_merge(self, m, size):
        t = vl.trace(m, random_image(5, size), PROMPT, keep=vl.Keep(attention=False))
        span = t.spans["image"]
        thw = reference_inputs(m, [random_image(5, size)], t.meta["rendered_prompt"])["image_grid_thw"][0].tolist()
        assert thw[0] == 1 and span.grid == (thw[1] // 2, thw[2] // 2)
        assert len(span) == span.grid[0] * span.grid[1] == (t.tokens.segment == "image").sum()
        width, height = size
        assert span.grid == (round(height / 8), round(width / 8))  # patch 4 x merge 2, no resize needed here
        ids = t.tokens.id.tolist()
        vision_start, vision_end = m.model.config.vision_start_token_id, m.model.config.vision_end_token_id
        assert ids[span.start - 1] == vision_start and ids[span.stop] == vision_end

    @feature("spans")
    def test_span_count_equals_the_models_image_features(self, m):
        image = random_image(6, (56, 32))
        t = vl.trace(m, image, PROMPT, keep=vl.Keep(attention=False))
        inputs = reference_inputs(m, [image], t.meta["rendered_prompt"])
        with torch.no_grad():
            features = m.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
        assert features[0].shape[0] == len(t.spans["image"])

    @feature("spans")
    def test_placeholder_in_prompt_keeps_its_place(self, m):
        t = vl.trace(m, random_image(1), "describe <|vision_start|><|image_pad|><|vision_end|> in one word",
                     keep=vl.Keep(attention=False, layers=[0]))
        assert t.meta["rendered_prompt"].endswith(
            "user\ndescribe <|vision_start|><|image_pad|><|vision_end|> in one word<|im_end|>\n<|im_start|>assistant\n")
        words = t.tokens.text[t.tokens.segment == "instruction"].tolist()
        assert words == ["describe", "in", "one", "word"]
        assert t.spans["instruction"].start < t.spans["image"].start < t.spans["instruction"].stop

    @feature("multi_image")
    def test_two_images_of_different_sizes(self, m):
        t = vl.trace(m, [random_image(1, (64, 32)), random_image(2, (24, 48))], "rate the quality of this image")
        first, second = t.spans["image"], t.spans["image_1"]
        assert (first.image_index, second.image_index) == (0, 1)
        assert first.grid == (4, 8) and second.grid == (6, 3)
        assert first.stop < second.start  # <|vision_end|><|vision_start|> between them
        assert (t.tokens.segment == "image").sum() == 32 + 18

    @feature("rows")
    def test_positions_are_three_dimensional(self, m, single):
        """The proof that M-RoPE is in play: the model's own 3-D positions differ from the sequence index on the
        image and after it, yet rows equal eager (test_rows_equal_eager_weights) with no Qwen code in capture."""
        images, prompt = single
        t = vl.trace(m, images, prompt, keep=vl.Keep(attention=False, layers=[0]))
        inputs = reference_inputs(m, images, t.meta["rendered_prompt"])
        positions, _ = m.model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                                    image_grid_thw=inputs["image_grid_thw"],
                                                    attention_mask=inputs["attention_mask"])
        span = t.spans["image"]
        rows, cols = span.grid
        image = positions[:, 0, span.start:span.stop].tolist()
        assert image[1] == [span.start + r for r in range(rows) for _ in range(cols)]  # row index
        assert image[2] == [span.start + c for _ in range(rows) for c in range(cols)]  # column index
        assert positions[0, 0, -1].item() == span.start + max(rows, cols) + (len(t.tokens) - span.stop) - 1
        import inspect

        import vlm_lens.tracing.hooks

        assert "qwen" not in inspect.getsource(vlm_lens.tracing.hooks).lower()
