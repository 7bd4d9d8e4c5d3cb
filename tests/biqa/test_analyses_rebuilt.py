"""A run rebuilds every analysis it is given (``Reducer.fresh``) once per shard and again on resume: the rebuilt
analysis must be the same one — same arguments, same table prefix when it was ``.named(...)``, and the same objects
its config only describes (a lens, a patch source, a vocabulary)."""

from __future__ import annotations

import pytest

import vlm_lens as vl
from vlm_lens.biqa import analyses


def built(models):
    m = models["mha"]
    return {
        "Quality": analyses.Quality(n_boot=7),
        "Quality(lens)": analyses.Quality(lens=vl.TunedLens(m)),
        "Attention": analyses.Attention(query="level"),
        "Instability": analyses.Instability(k=3, lens=vl.TunedLens(m)),
        "Grounding": analyses.Grounding(folds=3),
        "KnockoutEffects": analyses.KnockoutEffects(window=2),
        "PatchingEffects": analyses.PatchingEffects(m),
    }


@pytest.mark.parametrize("name", ["Quality", "Quality(lens)", "Attention", "Instability", "Grounding",
                                  "KnockoutEffects", "PatchingEffects"])
def test_a_rebuilt_analysis_keeps_its_arguments_and_its_table_prefix(models, name):
    analysis = built(models)[name]
    plain = analysis.fresh()
    assert type(plain) is type(analysis) and plain.config() == analysis.config()
    assert plain.name == type(analysis).name
    renamed = analysis.named("second_reading")
    again = renamed.fresh()
    assert again.name == "second_reading" and again.config() == analysis.config()
    for kept in ("reader", "source", "vocabulary", "lens"):
        if hasattr(analysis, kept) and not isinstance(getattr(analysis, kept), (bool, type(None))):
            assert getattr(again, kept) is getattr(analysis, kept), kept  # the object itself, not a description
