"""Fixtures of the bad-input suite (a plugin of tests/conftest.py): one tiny model (grouped-query attention,
3 layers), warmed up and shared by every area; a context per test with what the cases of an area reach for; one
trace to read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import PROMPT, random_image, warm_up

import vlm_lens as vl


@dataclass
class Context:
    """What a case may use: the model (checked unchanged by cases that say so), an image, a folder of its own, and
    whatever an area adds (``trace``, ``saved``, ``run``, ...)."""

    model: vl.LensModel
    image: Any
    tmp: Path
    extra: dict

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["extra"][name]
        except KeyError:
            raise AttributeError(name) from None


@pytest.fixture(scope="session")
def tiny(models) -> vl.LensModel:
    m = models["gqa"]
    warm_up(m)
    return m


@pytest.fixture
def ctx(tiny, tmp_path) -> Context:
    return Context(tiny, random_image(0), tmp_path, {})


@pytest.fixture(scope="session")
def traced(tiny):
    """A trace with generation, attention and every layer (shared: cases only read it)."""
    return vl.trace(tiny, random_image(0), PROMPT, generate=3)
