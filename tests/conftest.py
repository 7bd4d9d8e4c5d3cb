"""Shared fixtures: tiny random-init checkpoints written to disk and loaded back through ``vl.load``.

Every model here goes through the same path a real checkpoint takes (config.json + safetensors + processor files
-> ``vl.load(path)``). Shapes cover multi-head, grouped-query and multi-query attention, CLS kept or dropped, and
LLaVA-NeXT's variable number of image tokens.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub: fail fast instead of retrying

import numpy as np
import pytest
import torch
from PIL import Image

import vlm_lens as vl
from vlm_lens.testing import tiny_llava

torch.set_num_threads(2)

#: Records feature outcomes per model family for docs/families.md (see tests/families_record.py); the fixtures of
#: the bad-input suite (tests/bad_input/fixtures.py).
pytest_plugins = ["families_record", "bad_input.fixtures"]

#: name -> tiny_llava keyword arguments
SHAPES = {
    "mha": dict(layers=2, heads=4, kv_heads=4, seed=1),
    "gqa": dict(layers=3, heads=4, kv_heads=2, seed=2),
    "mqa-cls": dict(layers=2, heads=4, kv_heads=1, hidden=32, select_strategy="full", seed=3),
    "next": dict(layers=2, heads=4, kv_heads=2, next=True, seed=4),
}

PROMPT = "How would you rate the quality of this image?"


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: str(tiny_llava(root / name, **kwargs)) for name, kwargs in SHAPES.items()}


@pytest.fixture(scope="session")
def models(checkpoints) -> dict[str, vl.LensModel]:
    return {name: vl.load(path) for name, path in checkpoints.items()}


@pytest.fixture(params=["mha", "gqa", "mqa-cls", "next"])
def shape(request) -> str:
    return request.param


@pytest.fixture
def model(models, shape) -> vl.LensModel:
    return models[shape]


def random_image(seed: int, size: tuple[int, int] = (50, 40)) -> Image.Image:
    """An RGB noise image of ``size`` = (width, height)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def image() -> Image.Image:
    return random_image(0)


@pytest.fixture(scope="session")
def image_path(tmp_path_factory) -> str:
    """``random_image(0)`` saved as a file: a trace of an image file records its path, so figures and reports can
    draw the picture."""
    path = tmp_path_factory.mktemp("images") / "noise.png"
    random_image(0).save(path)
    return str(path)


def hook_count(model: vl.LensModel) -> int:
    """Number of forward hooks / pre-hooks installed anywhere in the model."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.model.modules())


def warm_up(model: vl.LensModel) -> None:
    """One plain forward. transformers installs its own output-recording hooks on the vision tower the first time
    a model runs; counting hooks before that would blame vlm_lens for them."""
    inputs = model.processor(images=random_image(99), text="USER: <image>\nrate it ASSISTANT:", return_tensors="pt")
    with torch.no_grad():
        model.model(**inputs)


def attention_state(model: vl.LensModel) -> tuple:
    """What tracing may temporarily change: the decoder's attention implementation, hooks anywhere in the model,
    and transformers' global attention / mask registries. Call :func:`warm_up` on a fresh model first."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return (model.adapter.text_config._attn_implementation, hook_count(model),
            tuple(sorted(ALL_ATTENTION_FUNCTIONS._global_mapping)),
            tuple(sorted(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping)))


#: The questions of the zoo runs: a generated answer (description, then level), read where the level is decided.
ZOO_ASK = dict(prompt=PROMPT, prefill=False, generate=48)


@pytest.fixture(scope="session")
def zoo_runs(tmp_path_factory) -> dict[str, "vl.RunResult"]:
    """Both zoo checkpoints over six synthetic images: quality (with the lens), attention, instability (k=2)."""
    from vlm_lens import zoo
    from vlm_lens.biqa.analyses import Attention, Instability, Quality

    images, labels = zoo.synthetic(6, seed=1)
    dataset = vl.datasets.from_images(images, labels["mos"].tolist())
    root = tmp_path_factory.mktemp("zoo_runs")
    return {name: vl.run(vl.load(f"zoo:tiny-biqa-{name}"), dataset,
                         [Quality(n_boot=50, **ZOO_ASK), Attention(**ZOO_ASK),
                          Instability(k=2, temperature=1.0, **ZOO_ASK)], out=root / name, batch_size=6, progress=False)
            for name in ("one-stage", "two-stage")}
