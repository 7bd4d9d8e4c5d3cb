"""The zoo's shipped tuned lenses: they load onto their checkpoints, their recorded held-out KL is below the logit
lens's at every hidden index below the last, their files name no machine path, and the recipe's lens stage reads the
shipped checkpoints without changing them and writes the same bytes twice."""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import vlm_lens as vl
from vlm_lens import zoo
from vlm_lens.tracing.fingerprint import weights_fingerprint
from vlm_lens.zoo.lenses import first_top1
from vlm_lens.zoo.measure import read
from vlm_lens.zoo.train import QUICK, run


@pytest.fixture(scope="module", params=sorted(zoo.CHECKPOINTS))
def shipped(request):
    m = vl.load(f"zoo:{request.param}")
    return request.param, m, vl.TunedLens.load(f"zoo:{request.param}", m)


def test_each_checkpoint_ships_its_lens(shipped):
    name, m, lens = shipped
    folder = zoo.checkpoint_path(name) / "tuned_lens"
    assert sorted(p.name for p in folder.iterdir()) == ["lens.json", "lens.safetensors"]
    assert sum(p.stat().st_size for p in folder.iterdir()) < 2**20
    text = (folder / "lens.json").read_text()
    assert not any(root in text for root in ("/tmp", "/home", "/work", "/root"))
    info = json.loads(text)
    assert info["model"]["name"] == f"zoo:{name}" and info["model"]["weights_digest"] == \
        weights_fingerprint(m.model)["weights_digest"]
    assert lens.layers == list(range(m.adapter.n_layers))
    assert info["held_out"]["samples"] == 256 and info["held_out"]["source"]["name"] == "zoo-seed-1"


def test_the_shipped_lenses_are_package_data():
    """Every file under zoo/checkpoints/ (the lenses in tuned_lens/ included) matches a package-data pattern, so a
    wheel carries it."""
    package = Path(vl.__file__).parent
    pyproject = package.parent / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("installed without its source tree")
    patterns = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["vlm_lens"]
    matched = {p for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    shipped = {p for p in (package / "zoo" / "checkpoints").rglob("*") if p.is_file()}
    assert any(p.parent.name == "tuned_lens" for p in shipped)
    assert shipped <= matched, sorted(str(p.relative_to(package)) for p in shipped - matched)


def test_the_recorded_held_out_kl_is_below_the_logit_lens_everywhere(shipped):
    _, m, lens = shipped
    table = lens.held_out
    below = table[table.layer < m.adapter.n_layers]
    assert (below.tuned < below.logit).all(), table
    assert below.tuned.mean() <= 0.25 * below.logit.mean(), table  # the target, on the shipped lens


def test_first_top1_counts_equal_readings_through_each_lens(shipped):
    _, m, lens = shipped
    images = zoo.synthetic(3, seed=1).images
    counts = first_top1(m, images, lens, batch=3)
    t = vl.trace(m, images[0], zoo.PROMPTS[0], generate=48, keep=vl.Keep(attention=False))
    reading = read(t, lens=lens)
    # by hand: the first hidden index whose translated state puts the level word first at the decision position
    level = m.adapter.tokenizer.convert_tokens_to_ids(reading.level)
    n = m.adapter.n_layers
    first = None
    for l in range(n + 1):
        h = t.hidden[l, reading.decision]
        if l < n:
            h = h + lens.weight[l].detach() @ h + lens.bias[l].detach()
        with torch.no_grad():
            if int(m.model.lm_head(m.adapter.final_norm(h)).argmax()) == level:
                first = l
                break
    assert reading.lens_first_top1 == first
    assert counts["tuned"].sum() == counts["logit"].sum() == 3 and counts.loc[first, "tuned"] >= 1


def test_the_lens_stage_reads_the_shipped_checkpoints_and_writes_the_same_bytes(tmp_path):
    before = {name: weights_fingerprint(vl.load(f"zoo:{name}").model) for name in zoo.CHECKPOINTS}
    recipe = replace(QUICK, lens_images=6, lens_held_out=2, lens_batch=3)
    for out in ("a", "b"):
        measurements = run(tmp_path / out, recipe, stages=("lens",), log=lambda s: None)
    assert set(measurements["stages"]) == {"lens"}
    for name in zoo.CHECKPOINTS:
        a, b = (tmp_path / out / name / "tuned_lens" for out in ("a", "b"))
        for file in ("lens.safetensors", "lens.json"):
            assert (a / file).read_bytes() == (b / file).read_bytes(), (name, file)
        assert not (a.parent / "config.json").exists()  # the checkpoint itself is not copied or retrained
        assert weights_fingerprint(vl.load(f"zoo:{name}").model) == before[name]
    stage = measurements["stages"]["lens"]["one-stage"]
    assert np.isfinite(stage["ratio"]) and sum(stage["first_top1"]["logit"]) <= 2
