"""The generic adapter: an image-text-to-text family without adapter (VipLLaVA) traced (its loading warning, naming
what was guessed, is checked by families.py; the family-independent invariants run in test_invariants.py); models
missing a piece of the common layout refused with the piece named."""

from __future__ import annotations

import pytest
from conftest import random_image
from families import family_fixtures, rows
from invariants import feature
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    LlamaConfig,
    LlamaForCausalLM,
)

import vlm_lens as vl
from vlm_lens.core.errors import UnsupportedModelError
from vlm_lens.models import adapter_class
from vlm_lens.models.generic import GenericAdapter

variant = rows("generic (VipLLaVA)")
checkpoint, m, eager, single, batch = family_fixtures()


class TestGeneric:

    @feature("spans")
    def test_spans_are_runs_of_the_image_token_without_grid(self, m, single):
        images, prompt = single
        t = vl.trace(m, images, prompt, keep=vl.Keep(attention=False, layers=[0]))
        assert m.family == "generic" and isinstance(m.adapter, GenericAdapter)
        span = t.spans["image"]
        assert len(span) == 16 and span.grid is None and span.layout == ()

    @feature("multi_image")
    def test_adjacent_images_are_split_evenly(self, m):
        t = vl.trace(m, [random_image(1), random_image(2)], "rate it", keep=vl.Keep(attention=False, layers=[0]))
        first, second = t.spans["image"], t.spans["image_1"]
        assert (first.stop, len(first), len(second)) == (second.start, 16, 16)


def test_config_without_image_token_is_refused_before_loading(tmp_path):
    LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 vocab_size=10)).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not read")
    with pytest.raises(UnsupportedModelError, match=r"model_type='llama' is not a family.*generic adapter does not "
                                                    r"apply either: it needs an image token id in the config"):
        vl.load(tmp_path)
    with pytest.raises(UnsupportedModelError, match="supported:"):
        adapter_class("llama")  # no config: the old message


@pytest.mark.parametrize("remove, piece", [
    (lambda model: delattr(model.model.language_model, "norm"),
     r"a final norm on the decoder at `model.language_model`"),
    (lambda model: setattr(model.model.language_model, "layers", None), r"a decoder stack: an nn.ModuleList `layers`"),
    (lambda model: [delattr(layer, "self_attn") for layer in model.model.language_model.layers],
     r"`self_attn` on the decoder layers at `model.language_model.layers`"),
    (lambda model: setattr(model, "lm_head", None), r"an output head"),
    (lambda model: setattr(model.config, "image_token_id", None), r"an image token id in the config"),
])
def test_missing_piece_is_named(checkpoint, remove, piece):
    model = AutoModelForImageTextToText.from_pretrained(checkpoint)
    remove(model)
    with pytest.raises(UnsupportedModelError, match=r"model_type='vipllava'.* [Tt]he generic adapter (could not find|"
                                                    r"does not apply either: it needs) " + piece):
        vl.wrap(model, AutoProcessor.from_pretrained(checkpoint, backend="pil"))
