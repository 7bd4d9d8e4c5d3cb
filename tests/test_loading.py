"""load / wrap: the real from_pretrained path, family detection from config.json, clear refusals."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, LlamaConfig, LlamaForCausalLM

import vlm_lens as vl
from vlm_lens.errors import UnsupportedModelError


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
