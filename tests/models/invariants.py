"""The invariants every model family must pass, each against an independent reference.

``test_invariants.py`` runs :class:`FamilyInvariants` on every row of the table of ``families.py``, which
provides the fixtures:

- ``m``: the tiny checkpoint loaded with ``vl.load`` (SDPA attention);
- ``eager``: the same checkpoint loaded by transformers with an eager decoder (:func:`eager_twin`);
- ``single``: ``(images, prompt)`` of one sample;
- ``batch``: a list of ``(images, prompt)`` of different lengths (and image sizes where the family is dynamic).

References: eager attention weights (rows), ``output_hidden_states`` (residual stream), the model's own logits
(lens), ``generate`` (responses), step-by-step decoding with the KV cache (teacher forcing), and unbatched traces
(batches). Each test carries a ``feature`` marker; ``tests/families_record.py`` records the outcomes for the
table of docs/families.md.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import vlm_lens as vl
from vlm_lens.tracing.logit_lens import LogitLens

feature = pytest.mark.feature


def eager_twin(checkpoint: str, m: vl.LensModel):
    """The checkpoint loaded by transformers with an eager decoder: attention weights straight from
    softmax(q k^T * scale + mask). The vision tower keeps the implementation of the traced model ``m``, so that both
    decoders see bit-identical image features and the comparison isolates the decoder's attention."""
    from transformers import AutoModelForImageTextToText

    vision = m.model.config.vision_config._attn_implementation
    return AutoModelForImageTextToText.from_pretrained(
        checkpoint, attn_implementation={"text_config": "eager", "vision_config": vision}).eval()


def reference_inputs(m: vl.LensModel, images: list, text: str) -> dict[str, Any]:
    """The processor's own inputs for one unpadded rendered prompt (what a transformers user would pass)."""
    inputs = m.processor(images=m.adapter.processor_images([list(images)]), text=[text], return_tensors="pt")
    inputs = dict(inputs)
    inputs.pop("labels", None)
    return inputs


def reference(model, m: vl.LensModel, images: list, text: str, **kwargs: Any):
    with torch.no_grad():
        return model(**reference_inputs(m, images, text), **kwargs)


def rows_of(ref, query_positions: torch.Tensor) -> torch.Tensor:
    return torch.stack([a[0][:, query_positions] for a in ref.attentions]).float()


class FamilyInvariants:
    """Tests every family passes, run per row by test_invariants.py (the module docstring lists their fixtures)."""

    @feature("rows")
    def test_rows_equal_eager_weights(self, m, eager, single):
        images, prompt = single
        length = len(vl.trace(m, images, prompt, keep=vl.Keep(attention=False, layers=[0])).tokens)
        t = vl.trace(m, images, prompt, keep=vl.Keep(query_positions=list(range(length))))
        ref = reference(eager, m, images, t.meta["rendered_prompt"], output_attentions=True)
        assert len(ref.attentions) == m.adapter.n_layers == t.attention.shape[0]
        torch.testing.assert_close(t.attention, rows_of(ref, t.query_positions), atol=1e-5, rtol=0)
        torch.testing.assert_close(t.attention.sum(-1), torch.ones_like(t.attention.sum(-1)))

    @feature("rows")
    def test_rows_equal_eager_under_left_padding(self, m, eager, batch):
        images, prompts = [b[0] for b in batch], [b[1] for b in batch]
        shortest = min(len(t.tokens) for t in vl.trace(m, images, prompts, keep=vl.Keep(attention=False, layers=[0])))
        traces = vl.trace(m, images, prompts, keep=vl.Keep(query_positions=list(range(-shortest, 0))))
        assert len({len(t.tokens) for t in traces}) > 1  # the batch really was padded
        for t, pictures in zip(traces, images):
            ref = reference(eager, m, pictures, t.meta["rendered_prompt"], output_attentions=True)
            torch.testing.assert_close(t.attention, rows_of(ref, t.query_positions), atol=1e-5, rtol=0)

    @feature("hidden")
    def test_hidden_states_equal_output_hidden_states(self, m, single):
        images, prompt = single
        t = vl.trace(m, images, prompt)
        ref = reference(m.model, m, images, t.meta["rendered_prompt"], output_hidden_states=True)
        n = m.adapter.n_layers
        assert len(ref.hidden_states) == n + 1 == t.hidden.shape[0]
        for i in range(n):
            torch.testing.assert_close(t.hidden[i], ref.hidden_states[i][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(m.adapter.final_norm(t.hidden[n]), ref.hidden_states[n][0], atol=1e-5, rtol=0)

    @feature("lens")
    def test_lens_of_last_layer_equals_logits(self, m, single):
        images, prompt = single
        t = vl.trace(m, images, prompt, keep=vl.Keep(query_positions=[0, 3, -2, -1]))
        ref = reference(m.model, m, images, t.meta["rendered_prompt"])
        torch.testing.assert_close(t.logits, ref.logits[0, t.query_positions].float(), atol=1e-5, rtol=0)
        lens = LogitLens(m.adapter).logits(t.hidden[-1, t.query_positions])
        torch.testing.assert_close(lens, t.logits, atol=1e-4, rtol=1e-5)
        top = t.lens(topk=1, layers=[m.adapter.n_layers])
        assert top.token_id.tolist() == t.logits.argmax(-1).tolist()

    @feature("lens")
    def test_tuned_lens_is_the_logit_lens_at_identity_and_the_logits_at_the_last_index(self, m, single):
        """Identity translators decode through the family's own norm and head (soft-capping, scaled norms) exactly
        as the logit lens; with any translators the last hidden index still gives the model's own logits."""
        images, prompt = single
        t = vl.trace(m, images, prompt, keep=vl.Keep(query_positions=[0, -1]))
        lens = vl.TunedLens(m)
        logit = LogitLens(m.adapter)
        for l in range(m.adapter.n_layers + 1):
            assert torch.equal(lens(t.hidden[l], l), logit.logits(t.hidden[l]))
        with torch.no_grad():
            lens.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
        last = lens(t.hidden[-1, t.query_positions], m.adapter.n_layers)
        torch.testing.assert_close(last, t.logits, atol=1e-4, rtol=1e-5)

    @feature("generation")
    def test_response_is_what_generate_produces(self, m, single):
        images, prompt = single
        t = vl.trace(m, images, prompt, generate=6)
        inputs = reference_inputs(m, images, t.meta["rendered_prompt"])
        with torch.no_grad():
            out = m.model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=m.adapter.pad_token_id,
                                   suppress_tokens=m.adapter.placeholder_ids)
        new = out[0, inputs["input_ids"].shape[1]:].tolist()
        end = next((k + 1 for k, token in enumerate(new) if token in m.adapter.eos_token_ids), len(new))
        assert t.response_ids == new[:end] and len(new) > 0
        assert (t.tokens.segment.iloc[t.prompt_length:] == "response").all()
        logits = t.logits.clone()
        logits[:, m.adapter.placeholder_ids] = float("-inf")
        assert logits[:-1].argmax(-1).tolist() == t.response_ids

    @feature("kv_cache")
    def test_teacher_forced_states_equal_kv_cache_decoding(self, m, single):
        images, prompt = single
        t = vl.trace(m, images, prompt, generate=5)
        n = m.adapter.n_layers
        steps = []
        with torch.no_grad():
            out = m.model(**reference_inputs(m, images, t.meta["rendered_prompt"]), use_cache=True,
                          output_hidden_states=True)
            steps.append(out)
            for token in t.response_ids[:-1]:
                out = m.model(input_ids=torch.tensor([[token]]), cache=out.cache, use_cache=True,
                              output_hidden_states=True)
                steps.append(out)
        assert len(steps) == len(t.response_ids) > 0
        for k, out in enumerate(steps):
            pos = t.prompt_length - 1 + k
            for i in range(n):
                torch.testing.assert_close(t.hidden[i, pos], out.hidden_states[i][0, -1], atol=1e-4, rtol=0)
            torch.testing.assert_close(m.adapter.final_norm(t.hidden[n, pos]), out.hidden_states[n][0, -1],
                                       atol=1e-4, rtol=0)
            torch.testing.assert_close(t.logits[k], out.logits[0, -1], atol=1e-4, rtol=0)

    @feature("batching")
    def test_batch_equals_single_runs(self, m, batch):
        images, prompts = [b[0] for b in batch], [b[1] for b in batch]
        traces = vl.trace(m, images, prompts, generate=4)
        assert len({len(t.tokens) for t in traces}) > 1
        for b, pictures, prompt in zip(traces, images, prompts):
            one = vl.trace(m, pictures, prompt, generate=4)
            assert b.tokens.equals(one.tokens)
            assert b.spans == one.spans
            torch.testing.assert_close(b.hidden, one.hidden, atol=1e-4, rtol=0)
            torch.testing.assert_close(b.attention, one.attention, atol=1e-4, rtol=0)
            torch.testing.assert_close(b.logits, one.logits, atol=1e-4, rtol=0)

    @feature("batching")
    def test_text_only_sample_in_a_batch(self, m, single):
        images, prompt = single
        batch = vl.trace(m, [images, None], [prompt, "rate it"], generate=3)
        for b, pictures, text in zip(batch, [images, None], [prompt, "rate it"]):
            one = vl.trace(m, pictures, text, generate=3)
            assert b.tokens.equals(one.tokens)
            torch.testing.assert_close(b.hidden, one.hidden, atol=1e-4, rtol=0)
            torch.testing.assert_close(b.attention, one.attention, atol=1e-4, rtol=0)
        assert "image" not in batch[1].spans and (batch[1].tokens.segment != "image").all()

    @feature("spans")
    def test_image_positions_are_the_placeholder_tokens(self, m, batch):
        """Every image span starts and ends on an image token, image segments are exactly the image tokens inside
        spans, and the count equals the processor's own expansion."""
        images, prompts = [b[0] for b in batch], [b[1] for b in batch]
        for t, pictures in zip(vl.trace(m, images, prompts, keep=vl.Keep(attention=False, layers=[0])), images):
            ids = t.tokens.id.tolist()
            placeholders = set(m.adapter.placeholder_ids)
            image_positions = [p for p, i in enumerate(ids) if i in placeholders]
            assert (t.tokens.segment == "image").sum() == len(image_positions)
            assert len(t.image_spans) == len(pictures)
            assert [s.image_index for s in t.image_spans] == list(range(len(pictures)))
            covered = set()
            for span in t.image_spans:
                assert ids[span.start] in placeholders and ids[span.stop - 1] in placeholders
                inside = [p for p in range(span.start, span.stop) if ids[p] in placeholders]
                covered.update(inside)
                if span.layout:
                    assert sum(block.length for block in span.layout) == len(inside)
            assert covered == set(image_positions)
            text = t.meta["rendered_prompt"]
            expected = reference_inputs(m, pictures, text)["input_ids"][0].tolist()
            assert ids == expected
