"""Trace: save/load round trip (safetensors + parquet + json, no pickle), shape validation, the lens after load."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import PROMPT

import vlm_lens as vl


def test_save_load_round_trip(models, image, tmp_path):
    m = models["next"]
    t = vl.trace(m, image, PROMPT, generate=3)
    folder = t.save(tmp_path / "trace")
    assert sorted(p.name for p in folder.iterdir()) == ["tensors.safetensors", "tokens.parquet", "trace.json"]
    back = vl.Trace.load(folder, model=m)
    assert back.tokens.equals(t.tokens) and back.spans == t.spans
    for name in ("hidden", "positions", "logits", "query_positions", "attention"):
        assert torch.equal(getattr(back, name), getattr(t, name)), name
    assert (back.layers, back.attention_layers, back.prompt_length) == (t.layers, t.attention_layers, t.prompt_length)
    assert back.meta == json.loads(json.dumps(t.meta))
    pd.testing.assert_frame_equal(back.lens(topk=3), t.lens(topk=3))
    assert back.answer == t.answer


def test_loaded_without_model_has_no_lens(models, image, tmp_path):
    t = vl.trace(models["mha"], image, PROMPT, keep=vl.Keep(attention=False))
    back = vl.Trace.load(t.save(tmp_path / "t"))
    assert back.attention is None
    with pytest.raises(vl.VlmLensError, match="model=vl.load"):
        back.lens()
    torch.testing.assert_close(back.hidden, t.hidden)


def test_load_rejects_other_folders(tmp_path):
    with pytest.raises(vl.VlmLensError, match="missing tensors.safetensors, tokens.parquet, trace.json"):
        vl.Trace.load(tmp_path)


def test_inconsistent_shapes_are_refused(models, image):
    t = vl.trace(models["mha"], image, PROMPT)
    fields = dict(tokens=t.tokens, spans=t.spans, hidden=t.hidden, layers=t.layers, positions=t.positions,
                  logits=t.logits, query_positions=t.query_positions, attention=t.attention,
                  attention_layers=t.attention_layers, prompt_length=t.prompt_length)
    vl.Trace(**fields)  # consistent
    for change, message in [({"hidden": t.hidden[:, :-1]}, "hidden"), ({"layers": t.layers[:-1]}, "hidden"),
                            ({"logits": t.logits[:, None]}, "logits"), ({"attention": t.attention[..., :-1]}, "attention"),
                            ({"attention_layers": [0]}, "attention"),
                            ({"tokens": t.tokens.assign(segment="body")}, "segments")]:
        with pytest.raises(ValueError, match=message):
            vl.Trace(**{**fields, **change})
