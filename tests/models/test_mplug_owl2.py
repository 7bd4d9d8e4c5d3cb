"""The mPLUG-Owl2 port against the ORIGINAL implementation's outputs (tests/fixtures/mplug_owl2_tiny), strict
loading of the official key layout, refusal of other variants, and correctness under padding.

The reference tensors were produced by the original remote code (transformers 4.31, fp32, CPU, eager); every tensor
that expected.json lists is compared here, at 1e-5 relative to the tensor's scale (integers and generated ids
exactly). Nothing here compares the port with itself except where the property is self-consistency (padding).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import vlm_lens as vl
from vlm_lens.core.errors import UnsupportedModelError, VlmLensError
from vlm_lens.models.mplug_owl2 import (
    MPLUGOwl2ForCausalLM,
    expand2square,
    load_config,
    load_model,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mplug_owl2_tiny"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
T = 9  # visual tokens per image in the fixture: 8 queries + vit_eos


def close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5, name: str = "") -> None:
    """max |actual - expected| <= rel * max |expected| (the fixture's tolerance convention)."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.float().abs().max().clamp(min=1e-12)
    err = (actual.float() - expected.float()).abs().max()
    assert err <= rel * scale, f"{name}: max |diff| {err:.3g} > {rel} x {scale:.3g}"


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "inputs.safetensors"))


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "expected.safetensors"))


@pytest.fixture(scope="module")
def eager() -> vl.LensModel:
    return vl.load(FIXTURE, attn_implementation="eager")


@pytest.fixture(scope="module")
def reference_run(eager, inputs) -> dict[str, torch.Tensor]:
    """The fixture's forward and generate calls, verbatim, plus the hooks the fixture used."""
    model = eager.model
    captured = {}
    hooks = [model.model.layers[-1].register_forward_hook(  # (hidden, weights) here: output_attentions=True
                 lambda m, a, out: captured.__setitem__("last_layer_output_prenorm", out[0])),
             model.model.visual_abstractor.encoder.register_forward_hook(
                 lambda m, a, out: captured.__setitem__("abstractor_last_hidden_state", out))]
    try:
        with torch.no_grad():
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        images=inputs["pixel_values"], output_hidden_states=True, output_attentions=True,
                        use_cache=False, return_dict=True)
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        gen = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                             images=inputs["pixel_values"], max_new_tokens=5, do_sample=False, num_beams=1,
                             use_cache=True, output_scores=True, return_dict_in_generate=True)
        vision = model.model.vision_model(inputs["pixel_values"]).last_hidden_state
        visual = model.encode_images(inputs["pixel_values"])
    got = {"logits": out.logits, "modality_indicators": out.modality_indicators,
           "position_ids": out.position_ids, "attention_mask_expanded": out.attention_mask,
           "vision_last_hidden_state": vision, "visual_tokens": visual, "generated_ids": gen.sequences,
           "generation_scores": torch.stack(gen.scores), **captured}
    got.update({f"hidden_states.{i}": h for i, h in enumerate(out.hidden_states)})
    got.update({f"attentions.{i}": a for i, a in enumerate(out.attentions)})
    return got


# ------------------------------------------------------------------------------------------ numerical equivalence
@pytest.mark.parametrize("name", sorted(EXPECTED["expected.safetensors"]))
def test_every_reference_tensor(name, reference_run, expected):
    """Each tensor of expected.safetensors, as the original produced it."""
    actual, reference = reference_run[name], expected[name]
    if reference.dtype in (torch.int64, torch.int32):
        assert torch.equal(actual.to(reference.dtype), reference), name
    else:
        close(actual, reference, 1e-5, name)


def test_hidden_state_convention(reference_run, eager):
    """The last hidden state is after the final norm, like the original; logits are lm_head of it."""
    normed = eager.model.model.norm(reference_run["last_layer_output_prenorm"])
    close(reference_run["hidden_states.2"], normed, 1e-6)
    close(reference_run["logits"], eager.model.lm_head(normed), 1e-6)


def test_fixture_input_values(inputs):
    """The inputs are the ones expected.json documents (so the comparisons above are about the right call)."""
    assert inputs["input_ids"].tolist() == EXPECTED["values"]["input_ids"]
    assert inputs["attention_mask"].tolist() == EXPECTED["values"]["attention_mask"]


def test_sdpa_default_matches(inputs, expected):
    m = vl.load(FIXTURE)
    assert m.model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        out = m.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                      images=inputs["pixel_values"], output_hidden_states=True)
    close(out.logits, expected["logits"], 1e-5, "logits (sdpa)")
    for i in range(3):
        close(out.hidden_states[i], expected[f"hidden_states.{i}"], 1e-5, f"hidden_states.{i} (sdpa)")


def test_output_attentions_under_sdpa_is_eager(inputs, expected):
    m = vl.load(FIXTURE)
    with torch.no_grad():
        out = m.model(input_ids=inputs["input_ids"], images=inputs["pixel_values"], output_attentions=True)
    close(out.attentions[1], expected["attentions.1"], 1e-5)
    assert m.model.config._attn_implementation == "sdpa"


# ----------------------------------------------------------------------------------------------- preprocessing
def test_pixel_values_from_png(eager, inputs):
    image = Image.open(FIXTURE / "image.png").convert("RGB")
    square = expand2square(image, eager.processor.background)
    assert eager.processor.background == (122, 116, 104)
    assert np.array_equal(np.asarray(square), inputs["image_expand2square_uint8"].numpy())
    pixels = eager.processor.preprocess([image])
    torch.testing.assert_close(pixels, inputs["pixel_values_from_png"], rtol=0, atol=1e-6)


def test_expand2square_portrait():
    image = Image.new("RGB", (2, 6), (255, 0, 0))
    square = expand2square(image, (1, 2, 3))
    assert square.size == (6, 6)
    assert square.getpixel((0, 0)) == (1, 2, 3) and square.getpixel((2, 0)) == (255, 0, 0)


# ------------------------------------------------------------------------------------------------ weights loading
def _state() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "model.safetensors"))


def _folder(tmp_path: Path, name: str = "ckpt") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for file in ("config.json", "preprocessor_config.json", "generation_config.json"):
        shutil.copy(FIXTURE / file, folder / file)
    return folder


def _logits(model: MPLUGOwl2ForCausalLM, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], images=inputs["pixel_values"]).logits


def test_official_keys_are_the_state_dict():
    """Every key of the original's state_dict (inv_freq aside) is a key of the port, and nothing else."""
    model = load_model(FIXTURE)
    official = {k for k in _state() if not k.endswith("rotary_emb.inv_freq")}
    assert set(model.state_dict()) == official
    assert any(k.endswith("rotary_emb.inv_freq") for k in _state())  # ... which the fixture does carry


def test_sharded_bin_with_index(tmp_path, inputs, expected):
    folder = _folder(tmp_path)
    state = _state()
    keys = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
              "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    weight_map = {}
    for name, part in shards.items():
        torch.save({k: state[k] for k in part}, folder / name)
        weight_map.update({k: name for k in part})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model = vl.load(folder, attn_implementation="eager").model
    close(_logits(model, inputs), expected["logits"], 1e-5)


def test_sharded_safetensors_without_inv_freq(tmp_path, inputs, expected):
    folder = _folder(tmp_path)
    state = {k: v for k, v in _state().items() if "inv_freq" not in k}
    keys = sorted(state)
    weight_map = {}
    for i, part in enumerate((keys[:40], keys[40:])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    close(_logits(load_model(folder, attn_implementation="eager"), inputs), expected["logits"], 1e-5)


def test_dtype_argument():
    model = vl.load(FIXTURE, dtype=torch.bfloat16).model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_strict_keys(tmp_path, change):
    folder = _folder(tmp_path)
    state = _state()
    if change == "missing":
        del state["model.layers.1.self_attn.k_proj.multiway.1.weight"]
        del state["model.visual_abstractor.vit_eos"]
        listed = ["model.layers.1.self_attn.k_proj.multiway.1.weight", "model.visual_abstractor.vit_eos"]
    elif change == "unexpected":
        state["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(64, 64)
        listed = ["model.layers.0.self_attn.k_proj.weight"]
    else:
        state["lm_head.weight"] = torch.zeros(255, 64)
        listed = ["lm_head.weight: file (255, 64), model (256, 64)"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(VlmLensError) as err:
        vl.load(folder)
    for key in listed:
        assert key in str(err.value)
    assert change in str(err.value) or "shapes differ" in str(err.value)


def test_missing_shard(tmp_path):
    folder = _folder(tmp_path)
    state = _state()
    keys = sorted(state)
    torch.save({k: state[k] for k in keys[:50]}, folder / "pytorch_model-00001-of-00002.bin")
    weight_map = {k: "pytorch_model-00001-of-00002.bin" for k in keys[:50]}
    weight_map.update({k: "pytorch_model-00002-of-00002.bin" for k in keys[50:]})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(VlmLensError, match="pytorch_model-00002-of-00002.bin"):
        vl.load(folder)


def test_no_weights(tmp_path):
    folder = _folder(tmp_path)
    with pytest.raises(VlmLensError, match="has no weights"):
        vl.load(folder)


# ------------------------------------------------------------------------------------------------- configuration
def _config(**changes) -> dict:
    data = json.loads((FIXTURE / "config.json").read_text())
    for path, value in changes.items():
        target = data
        *parents, leaf = path.split(".")
        for key in parents:
            target = target[key]
        target[leaf] = value
    return data


@pytest.mark.parametrize("changes, message", [
    ({"model_type": "mplug_owl3"}, "mPLUG-Owl3"),
    ({"architectures": ["MPLUGOwl2QWenForCausalLM"]}, "not a variant"),
    ({"visual_config.visual_model.use_cls_token": False}, "use_cls_token"),
    ({"visual_config.visual_abstractor.add_v2t_pos_emb": True}, "add_v2t_pos_emb"),
    ({"visual_config.visual_abstractor.grid_size": 5}, "grid_size"),
    ({"visual_config.visual_model.hidden_size_new": 3}, "hidden_size_new"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"attention_bias": True}, "attention_bias"),
    ({"some_new_switch": 1}, "some_new_switch"),
])
def test_config_refusals(changes, message):
    with pytest.raises(UnsupportedModelError, match=message):
        load_config(_config(**changes))


def test_unknown_owl_variant_through_load(tmp_path):
    folder = tmp_path / "owl3"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mplug_owl3", "architectures": ["mPLUGOwl3Model"]}))
    with pytest.raises(UnsupportedModelError, match="mplug_owl3.*not"):
        vl.load(folder)


def test_7b_key_count_and_size():
    """At 7B the official checkpoints hold 894 tensors (32 of them inv_freq) and 8.20 B parameters."""
    config = load_config({"model_type": "mplug_owl2", "visual_config": {"visual_model": {}, "visual_abstractor": {}}})
    with torch.device("meta"):
        model = MPLUGOwl2ForCausalLM(config)
    assert len(model.state_dict()) + config.num_hidden_layers == 894
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == 8.20


def test_config_defaults_are_the_7b_shape():
    config = load_config({"model_type": "mplug_owl2", "visual_config": {"visual_model": {}, "visual_abstractor": {}}})
    assert config.visual_tokens_per_image == 65
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (4096, 32, 32000)
    vision = config.visual_model_config
    assert (vision.image_size, vision.patch_size, vision.num_positions) == (448, 14, 1025)


# ------------------------------------------------------------------------------------------------------ bad input
def test_more_markers_than_images(eager, inputs):
    ids = torch.tensor([[1, 23, -200, 41, -200, 5]])
    with pytest.raises(VlmLensError, match="2 <\\|image\\|> markers.*1 image"):
        eager.model(input_ids=ids, images=inputs["pixel_values"])
    with pytest.raises(VlmLensError, match="0 image"):
        eager.model(input_ids=ids)


def test_images_without_markers(eager, inputs):
    with pytest.raises(VlmLensError, match="0 <\\|image\\|> markers"):
        eager.model(input_ids=torch.tensor([[1, 23, 41]]), images=inputs["pixel_values"])


# --------------------------------------------------------------------------------------- padding and generation
def _batch_rows(rows: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), 2)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        lo = width - len(row) if side == "left" else 0
        ids[i, lo:lo + len(row)] = torch.tensor(row)
        mask[i, lo:lo + len(row)] = 1
    return ids, mask


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_unbatched(eager, inputs, side):
    """Markers layout, two prompts of different lengths and image counts; each row equals its own run."""
    pixels = inputs["pixel_values"]
    rows = [[1, 23, 87, -200, 41, 200, 77], [1, 9, -200, 130, 61, -200, 15, 170, 81, 44]]
    images = [pixels, torch.cat([pixels.flip(-1), pixels * 0.5])]
    ids, mask = _batch_rows(rows, side)
    with torch.no_grad():
        batched = eager.model(input_ids=ids, attention_mask=mask, images=torch.cat(images))
        for i, (row, image) in enumerate(zip(rows, images)):
            alone = eager.model(input_ids=torch.tensor([row]), images=image).logits[0]
            real = batched.attention_mask[i].bool()
            close(batched.logits[i][real], alone, 1e-4, f"row {i} ({side} padding)")
            assert batched.modality_indicators[i][real].sum() == T * row.count(-200)


def test_left_padded_generation_equals_unbatched(eager, inputs):
    pixels = inputs["pixel_values"]
    rows = [inputs["input_ids"][0].tolist(), [1, 9, -200, 130, 61]]
    ids, mask = _batch_rows(rows, "left")
    images = torch.cat([pixels, pixels.flip(-1)])
    with torch.no_grad():
        batched = eager.model.generate(input_ids=ids, attention_mask=mask, images=images, max_new_tokens=4,
                                       do_sample=False, pad_token_id=2)
        for i, row in enumerate(rows):
            alone = eager.model.generate(input_ids=torch.tensor([row]), images=images[i:i + 1], max_new_tokens=4,
                                         do_sample=False, pad_token_id=2)
            assert batched[i, ids.shape[1]:].tolist() == alone[0, len(row):].tolist()
    assert batched[0, ids.shape[1]:].tolist() == EXPECTED["values"]["generated"]["generated_ids"][0][-5:-1]


def test_cached_decoding_steps_are_text(eager, inputs):
    """A decoding step feeds one id against the cache: modality 0, position = spliced length."""
    with torch.no_grad():
        first = eager.model(input_ids=inputs["input_ids"], images=inputs["pixel_values"], use_cache=True)
        step = eager.model(input_ids=torch.tensor([[61]]), cache=first.cache,
                           attention_mask=torch.ones(1, 12, dtype=torch.long))  # the caller's unspliced mask
    assert step.modality_indicators.tolist() == [[0]]
    assert step.position_ids.tolist() == [[19]]
    assert step.attention_mask.shape == (1, 20)


def test_generation_without_cache_matches(eager, inputs):
    """use_cache=False re-splices the caller's ids at every step: the same greedy ids as the reference."""
    with torch.no_grad():
        ids = eager.model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                   images=inputs["pixel_values"], max_new_tokens=5, do_sample=False, use_cache=False)
    assert ids.tolist() == EXPECTED["values"]["generated"]["generated_ids"]


def test_labels_give_the_shifted_loss_over_text(eager, inputs, expected):
    """The loss over text targets, computed from the ORIGINAL's logits with the visual positions ignored."""
    ids = inputs["input_ids"]
    targets = torch.tensor([1, 23, 87, 154, 9] + [-100] * T + [41, 200, 77, 5, 130])
    reference = torch.nn.functional.cross_entropy(expected["logits"][0, :-1], targets[1:], ignore_index=-100)
    with torch.no_grad():
        out = eager.model(input_ids=ids, images=inputs["pixel_values"], labels=ids)
    assert float(out.loss) == pytest.approx(float(reference), rel=1e-5)


def test_save_pretrained_round_trip(tmp_path, eager, inputs, expected):
    """What the port saves (v5 config, official key names) loads back through vl.load."""
    eager.model.save_pretrained(tmp_path / "saved")
    shutil.copy(FIXTURE / "preprocessor_config.json", tmp_path / "saved")
    reloaded = vl.load(tmp_path / "saved", attn_implementation="eager").model
    close(_logits(reloaded, inputs), expected["logits"], 1e-5)


def test_a_prompt_that_is_only_the_image(eager, inputs, expected):
    """The original mistakes a length-1 prompt for a decoding step; the port splices it like any other."""
    with torch.no_grad():
        out = eager.model(input_ids=torch.tensor([[-200]]), images=inputs["pixel_values"], output_hidden_states=True)
    close(out.hidden_states[0][0], expected["visual_tokens"][0], 1e-6)
    assert out.modality_indicators.tolist() == [[1] * T]
