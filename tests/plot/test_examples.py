"""The example scripts (one per figure of the paper) run end to end on the shipped zoo checkpoints and write
their figures."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))
WRITES = {
    "latent_output": ["latent_output.png", "latent_output_final.png"],
    "topk_per_layer": ["topk_per_layer.png"],
    "target_words": ["target_words.png", "target_words_rank.png"],
    "attention_per_layer": ["attention_per_layer.png"],
    "attention_mass": ["attention_mass.png"],
    "patch_overlay": ["patch_attention_middle.png", "patch_attention_last.png", "patch_lens.png"],
    "compare_checkpoints": ["compare_target_words.png", "compare_attention.png", "compare_attention_mass.png"],
    "report": ["report.html"],
}


def test_every_example_is_listed():
    assert sorted(p.stem for p in SCRIPTS) == sorted(WRITES)


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_example_runs(script, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setattr(sys, "argv", [str(script), "--out", str(tmp_path), "--dpi", "60"])
    runpy.run_path(str(script), run_name="__main__")
    assert "wrote" in capsys.readouterr().out
    for name in WRITES[script.stem]:
        assert (tmp_path / name).stat().st_size > 3_000, name
