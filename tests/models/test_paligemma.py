"""PaliGemma / PaliGemma 2: the prompt format without chat template, the bidirectional prefix (image + prompt) and
causal answer in the attention rows, Gemma 2's attention and final-logit soft-capping, and the refused text-only
sample (in place of that invariant; the others run in test_invariants.py)."""

from __future__ import annotations

import pytest
import torch
from builders import tiny_paligemma
from conftest import PROMPT, random_image
from families import family_fixtures, rows
from invariants import feature, rows_of
from transformers import AttentionInterface, AutoModelForImageTextToText, AutoProcessor
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    AttentionMaskInterface,
)

import vlm_lens as vl

variant = rows("PaliGemma", "PaliGemma 2")
checkpoint, m, eager, single, batch = family_fixtures()


class TestPaliGemma:

    @feature("spans")
    def test_prompt_format_and_segments(self, m, single):
        images, prompt = single
        t = vl.trace(m, images, prompt, keep=vl.Keep(attention=False, layers=[0]))
        assert t.meta["rendered_prompt"] == "<image>" + prompt
        span = t.spans["image"]
        assert (span.start, span.stop, span.grid) == (0, 16, (4, 4))
        assert t.tokens.text.iloc[16] == "<s>" and t.tokens.segment.iloc[16] == "system"
        words = t.tokens.text[t.tokens.segment == "instruction"].tolist()
        assert " ".join(words) == "how would you rate the quality of this image ?"
        with pytest.raises(vl.VlmLensError, match="chat template"):
            vl.trace(m, images, prompt, system="be brief")

    @feature("multi_image")
    def test_two_images(self, m):
        t = vl.trace(m, [random_image(1), random_image(2)], "rate it", keep=vl.Keep(attention=False, layers=[0]))
        assert [(s.start, s.stop, s.image_index) for s in t.image_spans] == [(0, 16, 0), (16, 32, 1)]

    @feature("rows")
    def test_prefix_is_bidirectional_and_answer_causal(self, m, single):
        images, prompt = single
        t = vl.trace(m, images, prompt, generate=4, keep=vl.Keep(query_positions=[0, 20, -3, -1]))
        prompt_end = t.prompt_length
        assert len(t.response_ids) >= 3
        # an image token sees the whole prefix, later prompt words included, and nothing of the answer
        assert (t.attention[:, :, 0, prompt_end - 1] > 0).all()
        assert (t.attention[:, :, 0, prompt_end:] == 0).all()
        assert (t.attention[:, :, 1, 21:prompt_end] > 0).all()
        # an answer token sees nothing after itself
        last = len(t.tokens) - 3
        assert (t.attention[:, :, 2, last + 1:] == 0).all() and (t.attention[:, :, 2, last] > 0).all()

    @feature("batching")
    def test_text_only_sample_in_a_batch(self, m, single):
        """Replaces the invariant of the same name (Family.replaces): PaliGemma's prompt always starts with an
        image, so a text-only sample is refused instead of traced."""
        with pytest.raises(vl.VlmLensError, match=r"images\[1\] is None.*always start with an image"):
            vl.trace(m, [single[0], None], [single[1], "rate it"])

    @feature("lens")
    def test_final_logits_are_soft_capped(self, m, variant, single):
        images, prompt = single
        t = vl.trace(m, images, prompt, keep=vl.Keep(query_positions=[-1]))
        cap = getattr(m.model.config.get_text_config(), "final_logit_softcapping", None)
        raw = m.adapter.output_head(m.adapter.final_norm(t.hidden[-1, -1]))
        if variant == "PaliGemma 2":
            assert cap == 3.0 and t.logits.abs().max() < 3.0
            assert not torch.allclose(raw, t.logits[0], atol=1e-2)
        else:
            assert cap is None
            torch.testing.assert_close(raw, t.logits[0], atol=1e-5, rtol=0)


@feature("rows")
@pytest.mark.parametrize("variant", ["PaliGemma 2"])
def test_gemma2_rows_are_recomputed_with_softcap_and_windows(variant, tmp_path):
    """PaliGemma 2 under a non-eager implementation: rows computed by vlm_lens' attention function (soft-cap,
    sliding window, bidirectional prefix from the model's 4-D mask) equal the eager weights."""
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    path = tiny_paligemma(tmp_path / "pg2", version=2, sliding_window=8, seed=43)
    AttentionInterface.register("vlm_lens_test_eager", eager_attention_forward)
    AttentionMaskInterface.register("vlm_lens_test_eager", ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            path, attn_implementation={"text_config": "vlm_lens_test_eager", "vision_config": "eager"}).eval()
        m = vl.wrap(model, AutoProcessor.from_pretrained(path, backend="pil"))
        image = random_image(0)
        t = vl.trace(m, image, PROMPT, generate=3, keep=vl.Keep(query_positions=list(range(0, 27, 3)) + [-2, -1]))
        assert t.meta["rendered_prompt"] and m.adapter.text_config._attn_implementation == "vlm_lens_test_eager"
        eager = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="eager").eval()
        with torch.no_grad():
            inputs = m.processor(images=[image], text=[t.meta["rendered_prompt"]], return_tensors="pt")
            inputs.pop("labels")
            inputs["token_type_ids"] = torch.cat([inputs["token_type_ids"], torch.ones(1, 3, dtype=torch.long)], 1)
            inputs["input_ids"] = torch.tensor([t.tokens.id.tolist()])
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
            ref = eager(**inputs, output_attentions=True)
        expected = rows_of(ref, t.query_positions)
        torch.testing.assert_close(t.attention, expected, atol=1e-5, rtol=0)
        # the last answer token (29): the sliding layer 0 masks keys 8 or more behind it, the full layer 1 does not;
        # inside the prefix, the bidirectional block wins over the window (PaliGemma's masking)
        last = len(t.tokens) - 1
        assert (expected[0, :, -1, :last - 7] == 0).all() and (expected[1, :, -1, :last - 7] > 0).all()
        assert (expected[0, :, 0, :27] > 0).all()
    finally:
        for interface in (AttentionInterface, AttentionMaskInterface):
            interface._global_mapping.pop("vlm_lens_test_eager", None)
