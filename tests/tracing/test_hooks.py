"""Capture: hidden states == HF output_hidden_states, attention rows == eager weights, outputs unchanged, and
nothing left behind (hooks, attention implementation, registries), errors included."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPT, attention_state, random_image, warm_up
from transformers import AutoModelForImageTextToText

import vlm_lens as vl


def eager_twin(checkpoints, shape):
    return AutoModelForImageTextToText.from_pretrained(checkpoints[shape], attn_implementation="eager").eval()


def reference(hf_model, processor, image, text):
    """Eager / plain forward of one unpadded prompt, straight through transformers."""
    inputs = processor(images=image, text=text, return_tensors="pt")
    with torch.no_grad():
        return hf_model(**inputs, output_attentions=hf_model.config.text_config._attn_implementation == "eager",
                        output_hidden_states=True)


def test_rows_equal_eager_weights(models, checkpoints, shape, image):
    m = models[shape]
    t = vl.trace(m, image, PROMPT, keep=vl.Keep(query_positions=[0, 3, 7, -2, -1]))
    ref = reference(eager_twin(checkpoints, shape), m.processor, image, t.meta["rendered_prompt"])
    assert len(ref.attentions) == m.adapter.n_layers == t.attention.shape[0]
    expected = torch.stack([a[0][:, t.query_positions] for a in ref.attentions])
    torch.testing.assert_close(t.attention, expected, atol=1e-5, rtol=0)
    # rows are probability distributions and the causal mask holds exactly
    torch.testing.assert_close(t.attention.sum(-1), torch.ones_like(t.attention.sum(-1)))
    for k, q in enumerate(t.query_positions.tolist()):
        assert torch.all(t.attention[:, :, k, q + 1:] == 0)


def test_rows_equal_eager_under_left_padding(models, checkpoints, shape):
    m = models[shape]
    prompts = ["rate it", PROMPT + " is it sharp or blurry?"]
    images = [random_image(1, (64, 32)), random_image(2, (40, 40))]
    traces = vl.trace(m, images, prompts, keep=vl.Keep(query_positions=[1, -3, -1]))
    eager = eager_twin(checkpoints, shape)
    for t, image in zip(traces, images):
        ref = reference(eager, m.processor, image, t.meta["rendered_prompt"])
        expected = torch.stack([a[0][:, t.query_positions] for a in ref.attentions])
        assert expected.shape == t.attention.shape
        torch.testing.assert_close(t.attention, expected, atol=1e-5, rtol=0)


def test_rows_of_a_model_running_eager(models, checkpoints, image):
    eager = eager_twin(checkpoints, "gqa")
    m = vl.wrap(eager, models["gqa"].processor)
    warm_up(m)
    before = attention_state(m)
    t = vl.trace(m, image, PROMPT, keep=vl.Keep(query_positions=[2, -1]))
    assert attention_state(m) == before
    ref = reference(eager, m.processor, image, t.meta["rendered_prompt"])
    torch.testing.assert_close(t.attention, torch.stack([a[0][:, t.query_positions] for a in ref.attentions]),
                               atol=0, rtol=0)


def test_hidden_states_equal_output_hidden_states(model, image):
    t = vl.trace(model, image, PROMPT)
    ref = reference(model.model, model.processor, image, t.meta["rendered_prompt"])
    n = model.adapter.n_layers
    assert len(ref.hidden_states) == n + 1 == t.hidden.shape[0]
    for i in range(n):  # HF's entries 0..n-1 are raw: decoder input, then layer outputs
        torch.testing.assert_close(t.hidden[i], ref.hidden_states[i][0], atol=1e-6, rtol=0)
    # HF's last entry is already normed; ours is the raw output of the last layer
    torch.testing.assert_close(model.adapter.final_norm(t.hidden[n]), ref.hidden_states[n][0], atol=1e-6, rtol=0)
    assert not torch.allclose(t.hidden[n], ref.hidden_states[n][0], atol=1e-3)


def test_capture_leaves_forward_bit_identical(model, image):
    """The same forward with and without an active capture (rows in every layer, all hidden states)."""
    from vlm_lens.tracing.hooks import Recorder

    text = model.adapter.format_prompt(PROMPT, 1).text
    inputs = model.processor(images=[image, random_image(5)], text=[text, "USER: <image>\nrate it ASSISTANT:"],
                             padding=True, padding_side="left", return_tensors="pt")
    n = model.adapter.n_layers
    with torch.no_grad():
        plain = model.model(**inputs).logits
        with Recorder(model.adapter, list(range(n + 1)), torch.tensor([[0, 5, 30], [20, 25, 30]]),
                     list(range(n))) as capture:
            traced = model.model(**inputs).logits
    assert torch.equal(plain, traced)
    assert len(capture.rows) == n and len(capture.hidden) == n + 1


def test_trace_logits_equal_plain_forward(model, image):
    t = vl.trace(model, image, PROMPT, keep=vl.Keep(query_positions=list(range(-6, 0))))
    ref = reference(model.model, model.processor, image, t.meta["rendered_prompt"])
    torch.testing.assert_close(t.logits, ref.logits[0, t.query_positions].float(), atol=1e-6, rtol=0)


def test_state_restored_after_trace(model, image):
    warm_up(model)
    before = attention_state(model)
    vl.trace(model, image, PROMPT, generate=2)
    assert attention_state(model) == before
    assert before[0] == "sdpa"


def test_state_restored_when_forward_raises(model, image):
    warm_up(model)
    before = attention_state(model)

    def explode(*_):
        raise RuntimeError("boom inside the forward")

    handle = model.adapter.layers[-1].register_forward_pre_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            vl.trace(model, image, PROMPT)
    finally:
        handle.remove()
    assert attention_state(model) == before


def test_nested_captures_share_registration(models, image):
    """Two models traced one inside the other's capture (e.g. a callback) both restore cleanly."""
    from vlm_lens.tracing.hooks import Recorder

    a, b = models["mha"], models["gqa"]
    warm_up(a), warm_up(b)
    before = (attention_state(a), attention_state(b))
    index = torch.tensor([[0]])
    with Recorder(a.adapter, [0], index, [0]):
        vl.trace(b, image, PROMPT)
        assert a.adapter.text_config._attn_implementation != "sdpa"
    assert (attention_state(a), attention_state(b)) == before


@pytest.mark.parametrize("keep", [dict(), dict(device="cpu", dtype=torch.float64, positions=[0, 5, -1]),
                                  dict(dtype=torch.bfloat16, layers=[0, -1], positions=[-2, -1])],
                         ids=["default", "host-float64-positions", "bf16-layers"])
def test_kept_states_are_the_layer_outputs_bit_for_bit(models, keep):
    """Whatever is kept, where and in whichever dtype: exactly the tensors a hand-written hook sees, cast."""
    m = models["gqa"]
    seen: dict[int, torch.Tensor] = {}  # the last forward's states (the teacher-forced pass after generation)
    handles = [m.adapter.layers[0].register_forward_pre_hook(
        lambda module, args, kwargs: seen.__setitem__(0, (args[0] if args else kwargs["hidden_states"]).clone()),
        with_kwargs=True)]
    for i, layer in enumerate(m.adapter.layers):
        handles.append(layer.register_forward_hook(
            lambda module, args, out, i=i: seen.__setitem__(i + 1, (out[0] if isinstance(out, tuple) else out)
                                                           .clone())))
    images, prompts = [random_image(1, (64, 32)), random_image(2, (40, 40))], ["rate it", PROMPT]
    try:
        traces = vl.trace(m, images, prompts, generate=3, keep=vl.Keep(**keep))
    finally:
        for handle in handles:
            handle.remove()
    width = max(len(t.tokens) for t in traces)
    dtype = keep.get("dtype", torch.float32)
    for i, t in enumerate(traces):
        pad = width - len(t.tokens)
        assert t.hidden.dtype == dtype and t.hidden.device.type == "cpu"
        for row, layer in enumerate(t.layers):
            expected = seen[layer][i, pad + t.positions].to(dtype)
            assert torch.equal(t.hidden[row], expected), (i, layer)

