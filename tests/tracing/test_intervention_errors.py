"""Bad interventions: a VlmLensError that names the argument and the fix, and the model left exactly as it was
(no hook, the attention implementation and transformers' registries restored, the same logits) — whether the error
is raised before anything runs or from inside a forward of the generation."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import PROMPT, attention_state, random_image, warm_up

import vlm_lens as vl
from vlm_lens.testing import tiny_llava


@pytest.fixture(scope="module")
def m(tmp_path_factory):
    model = vl.load(tiny_llava(tmp_path_factory.mktemp("m"), layers=2, heads=4, kv_heads=2, seed=5))
    warm_up(model)
    return model


@pytest.fixture(scope="module")
def image():
    return random_image(3)


@pytest.fixture(scope="module")
def base(m, image):
    return vl.trace(m, image, PROMPT, generate=3)


def refused(m, image, match: str, **kwargs) -> None:
    """``vl.trace`` refuses ``kwargs`` with a message matching ``match``, and leaves the model as it was."""
    before = attention_state(m)
    logits = vl.trace(m, image, PROMPT, keep=vl.Keep(attention=False)).logits
    with pytest.raises(vl.VlmLensError, match=match):
        vl.trace(m, image, PROMPT, **kwargs)
    assert attention_state(m) == before
    assert torch.equal(vl.trace(m, image, PROMPT, keep=vl.Keep(attention=False)).logits, logits)


@pytest.mark.parametrize("build, match", [
    (lambda: vl.knockout([], "image", [0]), r"knockout\(queries=...\): the position set is empty"),
    (lambda: vl.knockout("image", 2.5, [0]), r"knockout\(keys=...\): expected a position name"),
    (lambda: vl.knockout("image", "response", "all"), r"knockout\(layers=...\): expected an integer"),
    (lambda: vl.knockout("image", "response", []), r"knockout\(layers=...\): the list is empty"),
    (lambda: vl.ablate("image", 0, value="half"), r"ablate\(value='half'\): expected 'zero', 'mean', or a tensor"),
    (lambda: vl.ablate("image", 0, value=torch.zeros(2, 3, 4)), r"ablate\(value=...\): expected .* got a tensor"),
    (lambda: vl.patch("not a trace", "image", 0), r"patch\(source=...\): expected a vl.Trace"),
])
def test_bad_arguments_of_the_verbs(build, match):
    with pytest.raises(vl.VlmLensError, match=match):
        build()


def test_unknown_position_name(m, image):
    refused(m, image, r"intervene\[0\].queries: unknown position name 'imgae'.*'image'.*'response'",
            intervene=[vl.knockout("imgae", "response", [0])])


def test_a_name_with_no_position_in_this_sequence(m, image):
    refused(m, image, r"queries: \['response'\] names no position of this sequence",
            intervene=[vl.knockout("response", "image", [0])])


@pytest.mark.parametrize("intervention, match", [
    (vl.knockout("response", "image", [2]), r"intervene\[0\].layers: \[2\] out of range; expected decoder layer "
                                            r"indices 0..n_layers-1 \(this model has 2"),
    (vl.knockout("response", "image", [0], heads=[4]), r"intervene\[0\].heads: \[4\] out of range"),
    (vl.ablate("image", [3]), r"intervene\[0\].layers: \[3\] out of range; expected hidden-state indices 0..n_layers"),
    (vl.ablate("image", [-4]), r"intervene\[0\].layers: \[-4\] out of range"),
    (vl.ablate("image", 0, torch.zeros(7)), r"value of shape \[7\] for a model of d_model 64"),
])
def test_layers_heads_and_shapes_out_of_range(m, image, intervention, match):
    refused(m, image, match, generate=2, intervene=[intervention])


def test_what_is_not_an_intervention(m, image, base):
    ko = vl.knockout("response", "image", [0])
    refused(m, image, r"intervene\[1\] is str 'image', not an intervention; build one with vl.knockout",
            intervene=[ko, "image"])
    refused(m, image, r"intervene=dict .*: expected a list of interventions", intervene={"kind": "knockout"})
    with pytest.raises(vl.VlmLensError, match=r"intervene: 1 lists of interventions for 2 prompts"):
        vl.trace(m, [image, image], [PROMPT, PROMPT], intervene=[[ko]])
    with pytest.raises(vl.VlmLensError, match=r"intervene\[1\]\[0\] is int 3, not an intervention"):
        vl.trace(m, [image, image], [PROMPT, PROMPT], intervene=[[ko], [3]])


def test_patch_sources_of_another_shape_or_length(m, image, base, tmp_path):
    narrow = vl.load(tiny_llava(tmp_path / "narrow", layers=2, hidden=32, seed=9))
    other_shape = vl.trace(narrow, image, PROMPT, response=base)
    refused(m, image, r"the patch source has d_model 32, this model 64; patch between models of the same shape",
            response=base, intervene=[vl.patch(other_shape, "image", [1])])
    shorter = vl.trace(m, image, "rate it")
    refused(m, image, r"the patch source is \d+ positions long, this sequence \d+; pass source_positions=",
            response=base, intervene=[vl.patch(shorter, "image", [1])])
    refused(m, image, r"2 positions to patch but 1 source positions",
            response=base, intervene=[vl.patch(shorter, [3, 4], [1], source_positions=[-1])])
    partial = vl.trace(m, image, PROMPT, response=base, keep=vl.Keep(layers=[0, 2]))
    refused(m, image, r"the patch source kept hidden indices \[0, 2\], not \[1\]; trace the source with keep=",
            response=base, intervene=[vl.patch(partial, "image", [1])])


def test_negative_positions_while_generating(m, image):
    refused(m, image, r"intervene\[0\].queries: negative positions count from the end .* not known while the answer "
                      r"is generated", generate=2, intervene=[vl.knockout([-1], "image", [0])])


def test_errors_raised_inside_a_forward_leave_the_model_as_it_was(m, image, base):
    keys = list(range(len(base.tokens)))
    refused(m, image, r"knockout in decoder layer 0 leaves position 5 of sample 0 no key to attend to",
            response=base, intervene=[vl.knockout([5], keys, [0])])
    refused(m, image, r"ablate\(value='mean'\) over positions .* fed by several forwards of the generation",
            generate=3, intervene=[vl.ablate("response", 1, "mean")])


def test_response_given_with_generation_or_of_bad_ids(m, image, base):
    refused(m, image, r"response= and generate= both say where the answer comes from", generate=2, response=base)
    refused(m, image, r"response: token ids \[1000\] are not answer tokens", response=[1000])
    refused(m, image, re.escape("response: expected token ids (a list of integers) or a Trace"), response="poor")
