"""The report read through a tuned lens: its embedded top-k tables are the tuned lens's (``Trace.lens`` with
``lens=``), and the page and its captions name the lens."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import PROMPT, random_image

import vlm_lens as vl
from vlm_lens.report.html import write_report


def embedded(path) -> dict:
    match = re.search(r'<script type="application/json" id="vlm-lens-data">(.*?)</script>', path.read_text(), re.S)
    return json.loads(match.group(1))


def test_the_report_reads_the_layers_through_the_tuned_lens(models, tmp_path):
    m = models["mha"]
    t = vl.trace(m, random_image(6), PROMPT, generate=3)
    lens = vl.TunedLens(m)
    with torch.no_grad():
        lens.weight.copy_(torch.randn(lens.weight.shape, generator=torch.Generator().manual_seed(0)) * 0.3)
    page = t.report(tmp_path / "tuned.html", topk=3, targets=["good"], lens=lens)
    data = embedded(page)
    position = t.prompt_length
    table = t.lens(topk=3, positions=[position], lens=lens)
    for i, layer in enumerate(t.layers):
        rows = table[table.layer == layer]
        stored = data["topk"][str(position)][i]
        assert [tok for tok, _ in stored] == rows.token.tolist()
        assert [p for _, p in stored] == pytest.approx(rows.prob.tolist(), abs=1e-5)
    text = page.read_text()
    assert "<h2>Tuned lens top-k per layer</h2>" in text and "Tuned lens: the top-1 token" in text
    assert "Logit lens" not in text
    plain = write_report(t, tmp_path / "logit.html", topk=3, figures=False)
    assert "<h2>Logit lens top-k per layer</h2>" in plain.read_text()
    other = models["gqa"]
    with pytest.raises(vl.VlmLensError, match="lens: this tuned lens decodes through another model's weights"):
        write_report(vl.trace(other, random_image(6), PROMPT), tmp_path / "x.html", figures=False, lens=lens)
