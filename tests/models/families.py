"""The table of model families: one row per line of docs/families.md, and the fixtures every family test uses.

A row says how to build its tiny checkpoint (a function of builders.py and its keyword arguments), how to load it,
and which samples the invariants trace. ``test_invariants.py`` runs :class:`invariants.FamilyInvariants` once per
row; each ``test_<family>.py`` holds only what is specific to its family and takes the same fixtures from here::

    variant = rows("Qwen2-VL", "Qwen2.5-VL")                 # the module's tests run once per row
    checkpoint, m, eager, single, batch = family_fixtures()

The fixtures live here, not in a ``tests/models/conftest.py``: a second ``conftest`` module would shadow
``tests/conftest.py`` for every test module that does ``from conftest import ...``. pytest registers a fixture in
each module whose namespace holds it; the model behind ``m`` is built once per row and session (:func:`built`).

A family file that replaces an invariant with its own version (PaliGemma refuses the text-only sample of a batch)
names it in ``replaces``: test_invariants.py then leaves that invariant out for the row, and the family file's
version is the one recorded for docs/families.md. ``tests/families_record.py`` reads the row from the ``variant``
parameter of each test.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import builders
import pytest
from conftest import PROMPT, random_image
from invariants import eager_twin

import vlm_lens as vl

#: ``(images, prompt)`` of one sample
Sample = tuple[list, str]


def single_image() -> Sample:
    """The sample of every family: one 50x40 image (not square, so that dynamic families resize or tile it)."""
    return [random_image(0, (50, 40))], PROMPT


def fixed_size_batch() -> list[Sample]:
    """Three samples of different lengths, the last with two images, for families that resize every image to one
    size (PaliGemma, Gemma 3, VipLLaVA): the lengths differ by the prompts and the number of images."""
    return [([random_image(1, (64, 32))], PROMPT), ([random_image(2, (40, 40))], "rate it"),
            ([random_image(3), random_image(4)], "what is the quality of this picture ?")]


def qwen2_vl_batch() -> list[Sample]:
    """As :func:`fixed_size_batch` with images of other sizes, each a whole number of 8-pixel merged patches, so
    that the grids differ too."""
    return [([random_image(1, (64, 32))], PROMPT), ([random_image(2, (24, 56))], "rate it"),
            ([random_image(3, (40, 40)), random_image(4, (32, 48))], "what is the quality of this picture ?")]


def onevision_batch() -> list[Sample]:
    """As :func:`fixed_size_batch` with landscape, portrait and square images: different numbers of crops."""
    return [([random_image(1, (64, 32))], PROMPT), ([random_image(2, (20, 60))], "rate it"),
            ([random_image(3, (40, 40)), random_image(4, (32, 48))], "what is the quality of this picture ?")]


def idefics3_batch() -> list[Sample]:
    """As :func:`fixed_size_batch` with a portrait image in the last sample: different tilings."""
    return [([random_image(1, (64, 32))], PROMPT), ([random_image(2, (40, 40))], "rate it"),
            ([random_image(3, (30, 60)), random_image(4, (32, 48))], "what is the quality of this picture ?")]


def loader_with_eager_fallback(expected: bool) -> Callable[[str], vl.LensModel]:
    """``vl.load`` checking its warning that the model falls back to eager attention: expected for PaliGemma 2
    (transformers has no SDPA for Gemma 2's soft-capped attention), and only there."""

    def load(checkpoint: str) -> vl.LensModel:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = vl.load(checkpoint)
        eager_fallback = [w for w in caught if "loading it with attn_implementation='eager'" in str(w.message)]
        assert len(eager_fallback) == expected
        return model

    return load


def load_with_generic_warning(checkpoint: str) -> vl.LensModel:
    """``vl.load`` of VipLLaVA, a family without adapter: it warns, naming what the generic adapter guessed."""
    with pytest.warns(UserWarning, match=r"model_type='vipllava' has no vlm_lens adapter; using the generic "
                                         r"adapter.*`model.language_model` \(2 x LlamaDecoderLayer\).*`model."
                                         r"language_model.norm`.*image token id 4"):
        return vl.load(checkpoint)


@dataclass(frozen=True)
class Family:
    """One row of docs/families.md and how to test it.

    Attributes:
        row: The name in docs/families.md; also the test id and the ``variant`` parameter of the row's tests.
        build: The builders.py function writing the tiny checkpoint into a folder.
        build_kwargs: Its keyword arguments (the seed included, so that each row has its own weights).
        single: The one sample of the single-sample invariants.
        batch: Samples of different lengths (and image sizes where the family is dynamic).
        load: Loads the checkpoint with ``vl.load``, asserting the warnings the family's loading must give.
        requires: ``(module, reason)``: the row is skipped without that optional package.
        replaces: Invariants that the family file replaces with its own version.
    """

    row: str
    build: Callable[..., Path]
    build_kwargs: dict[str, Any]
    single: Callable[[], Sample] = single_image
    batch: Callable[[], list[Sample]] = fixed_size_batch
    load: Callable[[str], vl.LensModel] = vl.load
    requires: tuple[str, str] | None = None
    replaces: tuple[str, ...] = ()


#: row -> Family, in the order of docs/families.md
FAMILIES: dict[str, Family] = {family.row: family for family in [
    Family("Qwen2-VL", builders.tiny_qwen2_vl, {"version": "2", "seed": 11}, batch=qwen2_vl_batch),
    Family("Qwen2.5-VL", builders.tiny_qwen2_vl, {"version": "2.5", "kv_heads": 1, "seed": 12}, batch=qwen2_vl_batch),
    Family("LLaVA-OneVision", builders.tiny_llava_onevision, {"seed": 21}, batch=onevision_batch),
    Family("Idefics3", builders.tiny_idefics3, {"seed": 31}, batch=idefics3_batch),
    Family("SmolVLM", builders.tiny_idefics3, {"smolvlm": True, "kv_heads": 1, "seed": 32}, batch=idefics3_batch,
           requires=("num2words", "transformers' SmolVLMProcessor needs the num2words package")),
    Family("PaliGemma", builders.tiny_paligemma, {"version": 1, "seed": 41}, load=loader_with_eager_fallback(False),
           replaces=("test_text_only_sample_in_a_batch",)),
    Family("PaliGemma 2", builders.tiny_paligemma, {"version": 2, "seed": 42}, load=loader_with_eager_fallback(True),
           replaces=("test_text_only_sample_in_a_batch",)),
    Family("Gemma 3", builders.tiny_gemma3, {"final_logit_softcapping": 3.0, "seed": 51}),
    Family("generic (VipLLaVA)", builders.tiny_vipllava, {"seed": 61}, load=load_with_generic_warning),
]}


def rows(*names: str):
    """The module-scoped fixture ``variant`` of a family test module: its tests run once per row of ``names``.

    Assign it to the name ``variant`` (pytest looks fixtures up by the module's names)."""
    unknown = set(names) - set(FAMILIES)
    assert not unknown, f"rows not in FAMILIES: {sorted(unknown)}"

    @pytest.fixture(scope="module", params=list(names))
    def variant(request) -> str:
        return request.param

    return variant


#: Per session: row -> (checkpoint folder, model loaded from it); see :func:`built`.
BUILT = pytest.StashKey[dict[str, tuple[str, vl.LensModel]]]()


def built(variant: str, tmp_path_factory: pytest.TempPathFactory, config: pytest.Config) -> tuple[str, vl.LensModel]:
    """The row's tiny checkpoint, written and loaded once per session (kept in the session's stash).

    test_invariants.py and the row's own module share them, as the invariants and the family's tests shared one
    module's model before the table: a second build and load per row would cost time and prove nothing more. Tests
    that change the model (a processor setting) restore it, as they had to then.
    """
    family = FAMILIES[variant]
    if family.requires:
        module, reason = family.requires
        pytest.importorskip(module, reason=reason)
    cache = config.stash.setdefault(BUILT, {})
    if variant not in cache:
        folder = str(family.build(tmp_path_factory.mktemp(family.build.__name__), **family.build_kwargs))
        cache[variant] = folder, family.load(folder)
    return cache[variant]


@pytest.fixture(scope="module")
def checkpoint(variant, tmp_path_factory, pytestconfig) -> str:
    """The row's tiny checkpoint folder (:func:`built`)."""
    return built(variant, tmp_path_factory, pytestconfig)[0]


@pytest.fixture(scope="module")
def m(variant, tmp_path_factory, pytestconfig) -> vl.LensModel:
    """The checkpoint loaded with the row's ``load`` (``vl.load``; SDPA attention where the family has it)."""
    return built(variant, tmp_path_factory, pytestconfig)[1]


@pytest.fixture(scope="module")
def eager(checkpoint, m):
    """The checkpoint loaded by transformers with an eager decoder (:func:`invariants.eager_twin`); only
    test_invariants.py asks for it."""
    return eager_twin(checkpoint, m)


@pytest.fixture
def single(variant) -> Sample:
    return FAMILIES[variant].single()


@pytest.fixture
def batch(variant) -> list[Sample]:
    return FAMILIES[variant].batch()


def family_fixtures():
    """``checkpoint, m, eager, single, batch`` of the row ``variant``, for a test module to assign to these names:
    pytest finds fixtures among a module's names, so the module needs them there (an import would do the same, but
    reads as an unused name to linters)."""
    return checkpoint, m, eager, single, batch
