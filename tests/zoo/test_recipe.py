"""The recipe's building blocks: preprocessing and the cached-feature forward equal the real model's, the training
sequences carry the losses they claim, and a short run of the real recipe code lowers the loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vlm_lens as vl
from vlm_lens.zoo.decoder import Sequences, cache_features, forward, train_decoder
from vlm_lens.zoo.grammar import PROMPTS
from vlm_lens.zoo.model import build, pixel_values
from vlm_lens.zoo.synthetic import synthetic_arrays
from vlm_lens.zoo.train import QUICK, run
from vlm_lens.zoo.vision import init_dct, pretrain_vision


@pytest.fixture(scope="module")
def data():
    return synthetic_arrays(24, seed=9)


@pytest.fixture(scope="module")
def built():
    model, processor = build(seed=3)
    return model.eval(), processor


def test_pixel_values_equal_the_processor(built, data):
    _, processor = built
    images, _ = data
    from PIL import Image

    expected = processor.image_processor([Image.fromarray(x) for x in images[:4]], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixel_values(images[:4]), expected, rtol=0, atol=1e-6)


def test_cached_feature_forward_equals_llava_forward(built, data):
    model, processor = built
    images, labels = data
    sequences = Sequences.build(processor, labels)
    ids, _, rows = sequences.batch([0, 1, 2], "answer", np.random.default_rng(0))
    features = cache_features(model, images, dtype=torch.float32)
    with torch.no_grad():
        ours = forward(model, ids, features[rows])
        theirs = model(input_ids=ids, pixel_values=pixel_values(images[rows.numpy()])).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_sequence_kinds_put_the_loss_where_they_say(built, data):
    _, processor = built
    _, labels = data
    tok = processor.tokenizer
    sequences = Sequences.build(processor, labels)
    rng = np.random.default_rng(0)
    prompt = len(sequences.prompts[0])
    rows = list(range(8))
    for kind, expected in [("answer", lambda r: labels.answer[r]), ("describe", lambda r: labels.description[r]),
                           ("rate", lambda r: f"The quality of the image is {labels.level[r]}.")]:
        ids, target, images = sequences.batch(rows, kind, rng, prompt=0)
        assert (ids[:, :prompt] == torch.tensor(sequences.prompts[0])).all()
        assert (target[:, :prompt] == -100).all()
        for b, r in enumerate(rows):
            said = tok.decode([t for t in target[b].tolist() if t >= 0], skip_special_tokens=True)
            assert said.replace(" ", "") == expected(r).lower().replace(" ", ""), kind
        if kind == "rate":
            assert all(i != r for i, r in zip(images.tolist(), rows))
        else:
            assert images.tolist() == rows
    assert len(sequences.prompts) == len(PROMPTS)


def test_a_short_run_of_the_recipe_code_lowers_both_losses(data):
    torch.manual_seed(0)
    images, labels = data
    model, processor = build(seed=1)
    init_dct(model.model.vision_tower, images)
    vision = pretrain_vision(model, images, labels, steps=30, batch=16, lr=3e-3, log=lambda s: None)
    assert vision["loss_last"] < vision["loss_first"]
    features = cache_features(model, images)
    sequences = Sequences.build(processor, labels)
    decoder = train_decoder(model, features, sequences, mix={"answer": 1.0}, steps=30, batch=8, lr=3e-3,
                            log=lambda s: None)
    assert decoder["loss_last"] < 0.8 * decoder["loss_first"]


def test_quick_recipe_writes_checkpoints_that_load_and_answer(tmp_path):
    from dataclasses import replace

    recipe = replace(QUICK, train_images=48, val_images=4)
    measurements = run(tmp_path, recipe, stages=("two-stage",), log=lambda s: None)
    saved = json.loads((tmp_path / "measurements.json").read_text())
    assert set(saved["stages"]) >= {"data", "vision", "features", "two-stage"}
    assert saved["stages"]["two-stage"]["rate"]["steps"] == recipe.two_stage_rate_steps
    assert measurements["total_seconds"] > 0
    model = vl.load(tmp_path / "tiny-biqa-two-stage")
    trace = vl.trace(model, images_of(1)[0], PROMPTS[0], generate=3)
    assert len(trace.response_ids) == 3


def images_of(n):
    from vlm_lens.zoo import synthetic

    return synthetic(n, seed=11).images
