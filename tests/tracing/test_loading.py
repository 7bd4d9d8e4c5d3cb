"""load / wrap: the real from_pretrained path, family detection from config.json, clear refusals."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import PROMPT, random_image
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    LlamaConfig,
    LlamaForCausalLM,
)

import vlm_lens as vl
from vlm_lens.core.errors import UnsupportedModelError


def test_load_is_from_pretrained(checkpoints):
    m = vl.load(checkpoints["gqa"], dtype="bfloat16")
    assert m.family == "llava" and m.dtype == torch.bfloat16 and not m.model.training
    assert m.adapter.n_layers == 3 and m.adapter.n_heads == 4
    direct = AutoModelForImageTextToText.from_pretrained(checkpoints["gqa"], dtype=torch.bfloat16)
    for (k, a), (_, b) in zip(m.model.state_dict().items(), direct.state_dict().items()):
        assert torch.equal(a, b), k
    assert type(m.processor.image_processor).__name__.endswith("Pil")
    assert vl.load(checkpoints["next"]).family == "llava_next"


def test_wrap_an_already_loaded_model(checkpoints):
    model = AutoModelForImageTextToText.from_pretrained(checkpoints["mha"])
    model.train()
    m = vl.wrap(model, AutoProcessor.from_pretrained(checkpoints["mha"]))
    assert m.model is model and not model.training and m.family == "llava"


def test_a_model_spread_by_device_map_with_offloaded_layers_traces_exactly(checkpoints, models, tmp_path):
    """Models too large for one device load with ``device_map``: accelerate's hooks then move offloaded weights in at
    each forward. vlm_lens' hooks sit beside them; the trace equals the plain model's, and accelerate's hooks stay."""
    layers = models["gqa"].adapter.n_layers
    device_map = {"model.vision_tower": "cpu", "model.multi_modal_projector": "cpu", "lm_head": "cpu",
                  **{f"model.language_model.{n}": "cpu" for n in ("embed_tokens", "norm", "rotary_emb")},
                  **{f"model.language_model.layers.{i}": "disk" if i == 1 else "cpu" for i in range(layers)}}
    model = AutoModelForImageTextToText.from_pretrained(checkpoints["gqa"], device_map=device_map,
                                                        offload_folder=str(tmp_path))
    offloaded = model.model.language_model.layers[1]
    assert offloaded.self_attn.q_proj.weight.device.type == "meta" and hasattr(offloaded, "_hf_hook")
    spread = vl.wrap(model, models["gqa"].processor)
    image = random_image(5)
    expected = vl.trace(models["gqa"], image, PROMPT, generate=3)
    got = vl.trace(spread, image, PROMPT, generate=3)
    assert got.response_ids == expected.response_ids
    torch.testing.assert_close(got.hidden, expected.hidden, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.attention, expected.attention, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=1e-5)
    assert hasattr(offloaded, "_hf_hook") and not offloaded._forward_hooks and not offloaded._forward_pre_hooks


def test_unknown_architecture_lists_the_supported_ones(tmp_path):
    LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 vocab_size=10)).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match=r"model_type='llama' is not a family.*llava, llava_next.*register"):
        vl.load(tmp_path)


def test_folders_that_are_not_checkpoints(tmp_path):
    with pytest.raises(vl.VlmLensError, match="without config.json"):
        vl.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(vl.VlmLensError, match="not valid JSON"):
        vl.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 3}))
    with pytest.raises(UnsupportedModelError, match="no model_type"):
        vl.load(tmp_path)
    with pytest.raises(vl.VlmLensError, match="neither a local folder nor a hub id"):
        vl.load(str(tmp_path / "absent" / "model"))


def test_refuses_config_fields_it_does_not_understand(checkpoints, tmp_path):
    model = AutoModelForImageTextToText.from_pretrained(checkpoints["next"])
    model.config.vision_feature_select_strategy = "full"
    with pytest.raises(UnsupportedModelError, match="'full'"):
        vl.wrap(model)


def test_bad_dtype(checkpoints):
    with pytest.raises(vl.VlmLensError, match="dtype='float33'"):
        vl.load(checkpoints["mha"], dtype="float33")
