"""Bad input: each mistake of the core issue gets a clear error, and the model is left exactly as it was."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPT, attention_state, warm_up
from PIL import Image

import vlm_lens as vl


@pytest.fixture
def guarded(models):
    """The model, plus a check that an error left it untouched: hooks, attention implementation, registries,
    weights, training flag."""
    m = models["gqa"]
    warm_up(m)
    state = attention_state(m)
    weights = {k: v.clone() for k, v in m.model.state_dict().items()}
    yield m
    assert attention_state(m) == state
    assert not m.model.training
    assert all(torch.equal(weights[k], v) for k, v in m.model.state_dict().items())


def test_image_files(guarded, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    for path, message in [(tmp_path / "nope.jpg", "no such file"), (empty, "empty file"),
                          (corrupt, "could not be decoded")]:
        with pytest.raises(vl.VlmLensError, match=message) as info:
            vl.trace(guarded, path, PROMPT)
        assert str(path) in str(info.value)


def test_non_rgb_images_are_traced(guarded, tmp_path):
    Image.new("I;16", (40, 30)).save(tmp_path / "deep.png")
    for image in [Image.new("L", (40, 30), 90), Image.new("RGBA", (40, 30), (1, 2, 3, 4)), tmp_path / "deep.png"]:
        t = vl.trace(guarded, image, PROMPT)
        assert (t.tokens.segment == "image").sum() == 16


def test_placeholder_twice(guarded, image):
    with pytest.raises(vl.VlmLensError, match=r"contains the image placeholder '<image>' 2 times for 1 image"):
        vl.trace(guarded, image, "<image> rate <image>")


def test_prompt_longer_than_context(guarded, image):
    with pytest.raises(vl.VlmLensError, match=r"more than the model's context of 512"):
        vl.trace(guarded, image, "good " * 600)
    with pytest.raises(vl.VlmLensError, match=r"\+ 40 to generate"):
        vl.trace(guarded, image, "good " * 460, generate=40)


@pytest.mark.parametrize("generate", [-1, 2.5, "8"])
def test_generate_must_be_a_count(guarded, image, generate):
    with pytest.raises(vl.VlmLensError, match="generate="):
        vl.trace(guarded, image, PROMPT, generate=generate)


def test_sampling_settings(guarded, image):
    with pytest.raises(vl.VlmLensError, match="temperature > 0"):
        vl.trace(guarded, image, PROMPT, generate=vl.Generation(2, do_sample=True, temperature=0))


def test_topk_larger_than_vocab(guarded, image):
    t = vl.trace(guarded, image, PROMPT)
    with pytest.raises(vl.VlmLensError, match=r"topk=1000: expected an integer between 1 and the vocabulary size"):
        t.lens(topk=1000)


def test_positions_out_of_range(guarded, image):
    with pytest.raises(vl.VlmLensError, match=r"query_positions: 31 is out of range for a sequence of 31 positions"):
        vl.trace(guarded, image, PROMPT, keep=vl.Keep(query_positions=[0, 31]))
    with pytest.raises(vl.VlmLensError, match=r"positions: -32 is out of range"):
        vl.trace(guarded, image, PROMPT, keep=vl.Keep(positions=[-32]))
    with pytest.raises(vl.VlmLensError, match=r"layers: 5 is not valid"):
        vl.trace(guarded, image, PROMPT, keep=vl.Keep(layers=[5]))
    with pytest.raises(vl.VlmLensError, match=r"attention: 3 is not valid"):
        vl.trace(guarded, image, PROMPT, keep=vl.Keep(attention=[3]))
    t = vl.trace(guarded, image, PROMPT)
    with pytest.raises(vl.VlmLensError, match=r"position 40 is out of range"):
        t.lens(positions=[40])


def test_unknown_target_words(guarded, image):
    t = vl.trace(guarded, image, PROMPT)
    with pytest.raises(vl.VlmLensError) as info:
        t.lens_targets(["good", "superb", "so-so"])
    message = str(info.value)
    assert "'superb' -> ['<unk>']" in message and "'so-so' -> ['<unk>', '<unk>', '<unk>'] (ids [0, 0, 0])" in message
    assert "'good'" not in message


def test_mismatched_batch(guarded, image):
    with pytest.raises(vl.VlmLensError, match="a list of 2 prompts needs a list of as many images"):
        vl.trace(guarded, image, [PROMPT, PROMPT])
    with pytest.raises(vl.VlmLensError, match="prompts\\[1\\]: expected a string"):
        vl.trace(guarded, [image, image], [PROMPT, 3])
    with pytest.raises(vl.VlmLensError, match="expected the result of vl.load"):
        vl.trace(guarded.model, image, PROMPT)
