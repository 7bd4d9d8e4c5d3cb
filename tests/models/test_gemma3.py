"""Gemma 3: image spans between <start_of_image>/<end_of_image>, bidirectional image blocks and sliding-window
layers in the attention rows, the lens through Gemma's (1 + w) norm and scaled embeddings (with the model's own
choice not to soft-cap its final logits), and refused pan-and-scan crops (the family-independent
invariants run in test_invariants.py)."""

from __future__ import annotations

import pytest
from conftest import PROMPT, random_image
from families import family_fixtures, rows
from invariants import feature

import vlm_lens as vl

variant = rows("Gemma 3")
checkpoint, m, eager, single, batch = family_fixtures()


class TestGemma3:

    @feature("spans")
    def test_image_tokens_between_their_markers(self, m, single):
        images, prompt = single
        t = vl.trace(m, images, prompt, keep=vl.Keep(attention=False, layers=[0]))
        rendered = f"<start_of_turn>user\n<start_of_image>{prompt}<end_of_turn>\n<start_of_turn>model\n"
        assert t.meta["rendered_prompt"] == rendered
        span = t.spans["image"]
        assert len(span) == 16 and span.grid == (4, 4)
        texts = t.tokens.text.tolist()
        assert texts[span.start - 1] == "<start_of_image>" and texts[span.stop] == "<end_of_image>"
        assert set(texts[span.start:span.stop]) == {"<image_soft_token>"}

    @feature("multi_image")
    def test_two_images(self, m):
        t = vl.trace(m, [random_image(1), random_image(2, (20, 60))], "rate it",
                     keep=vl.Keep(attention=False, layers=[0]))
        first, second = t.spans["image"], t.spans["image_1"]
        assert (len(first), len(second), first.image_index, second.image_index) == (16, 16, 0, 1)
        assert second.start - first.stop == 2  # <end_of_image><start_of_image>

    @feature("rows")
    def test_image_blocks_are_bidirectional_and_windows_slide(self, m, single):
        images, prompt = single
        t = vl.trace(m, images, prompt, generate=4, keep=vl.Keep(query_positions=[4, 19, -1]))
        span = t.spans["image"]
        assert (span.start, span.stop) == (4, 20)
        layer_types = m.adapter.text_config.layer_types
        assert layer_types == ["sliding_attention", "sliding_attention", "full_attention"]
        # the first image token sees the rest of its image in every layer (sliding too), and no text after it
        assert (t.attention[:, :, 0, 5:20] > 0).all() and (t.attention[:, :, 0, 20:] == 0).all()
        # the last answer token: sliding layers see only the 8 positions up to it, the full layer everything
        last = len(t.tokens) - 1
        assert (t.attention[:2, :, 2, :last - 7] == 0).all() and (t.attention[2, :, 2, :last - 7] > 0).all()

    @feature("lens")
    def test_model_does_not_soft_cap_its_logits(self, m, single):
        """``final_logit_softcapping=3`` is in the config, yet Gemma3ForConditionalGeneration ignores it; the lens
        follows the model (lens == logits is test_lens_of_last_layer_equals_logits)."""
        images, prompt = single
        t = vl.trace(m, images, prompt, keep=vl.Keep(query_positions=[-1]))
        assert m.model.config.text_config.final_logit_softcapping == 3.0 and t.logits.abs().max() > 3.0

    @feature("spans")
    def test_pan_and_scan_crops_are_refused(self, m):
        m.processor.images_kwargs = {**type(m.processor).images_kwargs, "do_pan_and_scan": True,
                                     "pan_and_scan_min_crop_size": 8, "pan_and_scan_min_ratio_to_activate": 1.2}
        try:
            with pytest.raises(vl.VlmLensError, match="pan-and-scan"):
                vl.trace(m, random_image(1, (96, 32)), PROMPT)
        finally:
            del m.processor.images_kwargs
