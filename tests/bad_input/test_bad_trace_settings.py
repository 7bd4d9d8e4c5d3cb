"""Bad trace arguments and settings (``vl.trace``, ``vl.Keep``, ``vl.Generation``, the lens readers): each refused
with the argument named, and the model left exactly as it was. Values that are right but of another type (numpy
or torch integers, dtype names) are accepted and give the very trace the plain value gives.

The cases of the former tests/test_bad_input.py live here, with their assertions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PROMPT
from PIL import Image
from refusal import Case, check, params, refuses

import vlm_lens as vl


def _trace(**kwargs):
    return lambda ctx: vl.trace(ctx.model, ctx.image, PROMPT, **kwargs)


def _keep(name: str, names, **fields):
    """A Keep refused when it is built (no model needed) — and nothing reaches the model."""
    return Case(name, lambda ctx: vl.trace(ctx.model, ctx.image, PROMPT, keep=vl.Keep(**fields)), names, model=True)


def _generation(name: str, names, *args, **fields):
    return Case(name, lambda ctx: vl.trace(ctx.model, ctx.image, PROMPT, generate=vl.Generation(*args, **fields)),
                names, model=True)


CASES = [
    # vl.Keep: types
    _keep("keep-layers-int", ["Keep(layers=3)", "list of integers"], layers=3),
    _keep("keep-positions-int", ["Keep(positions=-1)", "[-1]"], positions=-1),
    _keep("keep-query-positions-int", ["Keep(query_positions=5)"], query_positions=5),
    _keep("keep-layers-text", ["Keep(layers='0,1')"], layers="0,1"),
    _keep("keep-layers-float", ["Keep(layers)", "1.5 is not an integer"], layers=[0, 1.5]),
    _keep("keep-layers-bool", ["Keep(layers)", "True is not an integer"], layers=[True]),
    _keep("keep-positions-none-entry", ["Keep(positions)", "None is not an integer"], positions=[None]),
    _keep("keep-attention-int", ["Keep(attention=1)", "True, False, or a list"], attention=1),
    _keep("keep-attention-all", ["Keep(attention='all')", "True, False, or a list"], attention="all"),
    _keep("keep-attention-float-entry", ["Keep(attention)", "0.0 is not an integer"], attention=[0.0]),
    _keep("keep-dtype-int8", ["Keep(dtype=torch.int8)", "floating-point"], dtype=torch.int8),
    _keep("keep-dtype-bool", ["Keep(dtype=torch.bool)", "floating-point"], dtype=torch.bool),
    _keep("keep-dtype-unknown-name", ["Keep(dtype='float33')"], dtype="float33"),
    _keep("keep-dtype-number", ["Keep(dtype=32)"], dtype=32),
    _keep("keep-device-unknown", ["Keep(device='gpu')", "not a device"], device="gpu"),
    Case("keep-device-cuda-without-cuda", lambda ctx: vl.trace(ctx.model, ctx.image, PROMPT,
                                                                keep=vl.Keep(device="cuda")),
         ["Keep(device='cuda')", "CUDA is not available"], model=True,
         marks=[pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")]),
    # vl.Keep: values out of range for this model / sequence (checked by the trace)
    Case("keep-query-position-past-the-end", _trace(keep=vl.Keep(query_positions=[0, 31])),
         ["query_positions: 31 is out of range for a sequence of 31 positions"], model=True),
    Case("keep-position-before-the-start", _trace(keep=vl.Keep(positions=[-32])), ["positions: -32 is out of range"],
         model=True),
    Case("keep-layer-past-the-last", _trace(keep=vl.Keep(layers=[5])), ["layers: 5 is not valid"], model=True),
    Case("keep-attention-layer-past-the-last", _trace(keep=vl.Keep(attention=[3])), ["attention: 3 is not valid"],
         model=True),
    Case("keep-layers-empty", _trace(keep=vl.Keep(layers=[])), ["keep.layers is empty"], model=True),
    Case("keep-positions-empty", _trace(keep=vl.Keep(positions=[])), ["keep.positions is empty"], model=True),
    Case("keep-not-a-keep", _trace(keep={"layers": [0]}), ["keep=", "vl.Keep"], model=True),
    # vl.Generation
    _generation("generation-zero-tokens", ["Generation(max_new_tokens=0)", ">= 1"], 0),
    _generation("generation-float-tokens", ["Generation(max_new_tokens=2.5)", "got float"], 2.5),
    _generation("generation-bool-tokens", ["Generation(max_new_tokens=True)"], True),
    _generation("generation-do-sample-text", ["Generation(do_sample='yes')", "True or False"], 2, do_sample="yes"),
    _generation("generation-temperature-text", ["Generation(temperature='0.7')", "number"], 2, do_sample=True,
                temperature="0.7"),
    _generation("generation-temperature-nan", ["Generation(temperature=nan)", "finite"], 2, temperature=float("nan")),
    _generation("generation-temperature-zero", ["temperature > 0"], 2, do_sample=True, temperature=0),
    _generation("generation-top-p-above-one", ["top_p=1.5", "0 < top_p <= 1"], 2, do_sample=True, top_p=1.5),
    _generation("generation-seed-text", ["Generation(seed='3')"], 2, do_sample=True, seed="3"),
    _generation("generation-seed-float", ["Generation(seed=3.0)"], 2, do_sample=True, seed=3.0),
    _generation("generation-seeds-not-ints", ["Generation(seed=[1, 2.5])"], 2, do_sample=True, seed=[1, 2.5]),
    _generation("generation-seeds-of-another-count", ["2 seeds for 1 prompts"], 2, do_sample=True, seed=[1, 2]),
    _generation("generation-kwargs-not-a-mapping", ["Generation(kwargs=[('top_k', 3)])", "mapping"], 2,
                kwargs=[("top_k", 3)]),
    _generation("generation-kwargs-max-new-tokens", ["'max_new_tokens'", "Generation(max_new_tokens=...)"], 2,
                kwargs={"max_new_tokens": 40}),
    _generation("generation-kwargs-max-length", ["'max_length'"], 2, kwargs={"max_length": 400}),
    _generation("generation-kwargs-do-sample", ["'do_sample'", "Generation(do_sample=...)"], 2,
                kwargs={"do_sample": True}),
    _generation("generation-kwargs-temperature", ["'temperature'"], 2, kwargs={"temperature": 0.2}),
    _generation("generation-kwargs-num-return-sequences", ["'num_return_sequences'"], 2,
                kwargs={"num_return_sequences": 2}),
    _generation("generation-kwargs-generation-config", ["'generation_config'"], 2, kwargs={"generation_config": None}),
    _generation("generation-kwargs-misspelt", ["Generation(kwargs=", "repetition_penallty", "refused"], 2,
                kwargs={"repetition_penallty": 1.2}),
    _generation("generation-kwargs-bad-value", ["Generation(kwargs=", "repetition_penalty"], 2,
                kwargs={"repetition_penalty": -1.0}),
    Case("generate-negative", _trace(generate=-1), ["generate=-1"], model=True),
    Case("generate-float", _trace(generate=2.5), ["generate=2.5"], model=True),
    Case("generate-text", _trace(generate="8"), ["generate='8'"], model=True),
    Case("generate-list", _trace(generate=[8]), ["generate=[8]"], model=True),
    # the other arguments of vl.trace
    Case("model-not-loaded", lambda ctx: vl.trace(ctx.model.model, ctx.image, PROMPT),
         ["expected the result of vl.load"], model=True),
    Case("model-a-path", lambda ctx: vl.trace("checkpoints/llava", ctx.image, PROMPT), ["model:", "got str"]),
    Case("prompt-not-text", lambda ctx: vl.trace(ctx.model, ctx.image, 3), ["prompts[0]: expected a string"],
         model=True),
    Case("prompt-none", lambda ctx: vl.trace(ctx.model, ctx.image, None), ["prompts[0]: expected a string"],
         model=True),
    Case("prompts-without-images", lambda ctx: vl.trace(ctx.model, ctx.image, [PROMPT, PROMPT]),
         ["a list of 2 prompts needs a list of as many images"], model=True),
    Case("prompts-with-a-number", lambda ctx: vl.trace(ctx.model, [ctx.image, ctx.image], [PROMPT, 3]),
         ["prompts[1]: expected a string"], model=True),
    Case("prefill-not-text", _trace(prefill=3), ["prefill=3", "string"], model=True),
    Case("system-not-text", _trace(system=["be kind"]), ["system=['be kind']", "string"], model=True),
    Case("template-text", _trace(template="no"), ["template='no'", "True or False"], model=True),
    Case("placeholder-twice", lambda ctx: vl.trace(ctx.model, ctx.image, "<image> rate <image>"),
         ["contains the image placeholder '<image>' 2 times for 1 image"], model=True),
    Case("prompt-longer-than-context", lambda ctx: vl.trace(ctx.model, ctx.image, "good " * 600),
         ["more than the model's context of 512"], model=True),
    Case("prompt-and-generation-longer-than-context",
         lambda ctx: vl.trace(ctx.model, ctx.image, "good " * 460, generate=40), [r"+ 40 to generate"], model=True),
    # the lens readers of a trace
    Case("lens-topk-larger-than-vocab", lambda ctx: ctx.traced.lens(topk=1000),
         ["topk=1000: expected an integer between 1 and the vocabulary size"], model=True),
    Case("lens-topk-zero", lambda ctx: ctx.traced.lens(topk=0), ["topk=0"], model=True),
    Case("lens-topk-float", lambda ctx: ctx.traced.lens(topk=2.0), ["topk=2.0"], model=True),
    Case("lens-position-past-the-end", lambda ctx: ctx.traced.lens(positions=[40]), ["position 40 is out of range"],
         model=True),
    Case("lens-position-text", lambda ctx: ctx.traced.lens(positions=["last"]), ["positions: expected integers"],
         model=True),
    Case("lens-layer-not-kept", lambda ctx: ctx.traced.lens(layers=[9]), ["layers [9] were not kept"], model=True),
    Case("lens-targets-several-tokens", lambda ctx: ctx.traced.lens_targets(["good", "superb", "so-so"]),
         ["'superb' -> ['<unk>']", "'so-so' -> ['<unk>', '<unk>', '<unk>'] (ids [0, 0, 0])"], model=True),
    Case("lens-targets-empty-word", lambda ctx: ctx.traced.lens_targets([""]), ["'': not a non-empty string"],
         model=True),
    Case("lens-targets-id-outside-vocab", lambda ctx: ctx.traced.lens_targets([10_000]),
         ["target token ids [10000] fall outside the vocabulary"], model=True),
]


@pytest.mark.parametrize("case", params(CASES))
def test_refused(case, ctx, traced):
    ctx.extra["traced"] = traced
    check(case, ctx)


def test_unknown_target_words_are_listed_and_known_ones_not(traced):
    err = refuses(lambda: traced.lens_targets(["good", "superb", "so-so"]), ["'superb'"])
    assert "'good'" not in str(err)


def test_non_rgb_images_are_traced(tiny, tmp_path):
    Image.new("I;16", (40, 30)).save(tmp_path / "deep.png")
    for image in [Image.new("L", (40, 30), 90), Image.new("RGBA", (40, 30), (1, 2, 3, 4)), tmp_path / "deep.png"]:
        t = vl.trace(tiny, image, PROMPT)
        assert (t.tokens.segment == "image").sum() == 16


def test_numpy_and_torch_integers_are_their_values(tiny, image):
    """Integers of numpy and torch are accepted wherever an int is, and give the trace the plain int gives."""
    plain = vl.trace(tiny, image, PROMPT, generate=2, keep=vl.Keep(layers=[0, -1], positions=[-3, -1],
                                                                   attention=[1]))
    other = vl.trace(tiny, image, PROMPT, generate=np.int64(2),
                     keep=vl.Keep(layers=[np.int32(0), torch.tensor(-1)], positions=(np.int64(-3), np.int8(-1)),
                                  attention=np.array([1])))
    assert other.layers == plain.layers and other.attention_layers == plain.attention_layers
    assert other.response_ids == plain.response_ids and other.meta["generate"] == 2
    for name in ("hidden", "positions", "logits", "attention"):
        assert torch.equal(getattr(other, name), getattr(plain, name)), name
    assert other.lens(topk=np.int64(3), positions=[np.int64(-1)]).equals(plain.lens(topk=3, positions=[-1]))
    seeded = vl.Generation(2, do_sample=True, seed=np.int64(5))
    assert seeded.seed == 5 and type(seeded.seed) is int


def test_dtype_names_are_the_dtypes(tiny, image):
    by_name = vl.trace(tiny, image, PROMPT, keep=vl.Keep(dtype="bf16", layers=[1]))
    by_dtype = vl.trace(tiny, image, PROMPT, keep=vl.Keep(dtype=torch.bfloat16, layers=[1]))
    assert by_name.hidden.dtype == torch.bfloat16 and torch.equal(by_name.hidden, by_dtype.hidden)
    full = vl.trace(tiny, image, PROMPT, keep=vl.Keep(layers=[1]))
    torch.testing.assert_close(by_name.hidden.float(), full.hidden, rtol=2**-8, atol=0)


def test_the_generated_length_is_the_one_recorded(tiny, image):
    """max_new_tokens lives in one place: what is generated is what meta and the context check say."""
    t = vl.trace(tiny, image, PROMPT, generate=vl.Generation(3, kwargs={"repetition_penalty": 1.3}))
    assert t.meta["generate"] == 3 and 1 <= len(t.response_ids) <= 3


def test_suppressed_tokens_add_to_the_placeholder(tiny, image):
    """A user's suppress_tokens are honoured, and the image placeholder stays suppressed (a generated placeholder
    would be replaced by image features in the traced pass)."""
    greedy = vl.trace(tiny, image, PROMPT, generate=4)
    first = greedy.response_ids[0]
    t = vl.trace(tiny, image, PROMPT, generate=vl.Generation(4, kwargs={"suppress_tokens": [first]}))
    placeholder = tiny.adapter.placeholder_ids
    assert first not in t.response_ids and not set(placeholder) & set(t.response_ids)
