"""``vlm-lens run --analyses knockout,patching``: the tables equal the library's on the same data, the effects are
printed, and the intervention options are refused (exit 2) where no intervention analysis uses them."""

from __future__ import annotations

import pandas as pd
import pytest

import vlm_lens as vl
from vlm_lens import zoo
from vlm_lens.cli import main
from vlm_lens.runs.datasets import from_csv
from vlm_lens.runs.engine import RunResult


@pytest.mark.parametrize("argv, message", [
    (["--analyses", "patching"], "--analyses patching needs --patch-source MODEL"),
    (["--analyses", "quality", "--window", "2"], "--window set(s) an intervention analysis that is not asked for"),
    (["--analyses", "knockout", "--patch-source", "zoo:tiny-biqa-one-stage"],
     "--patch-source set(s) an intervention analysis that is not asked for"),
    (["--analyses", "knockout", "--window", "0"], "--window: expected an integer >= 1"),
])
def test_intervention_options_without_their_analysis_exit_2(argv, message, capsys):
    assert main(["run", "m", "d.csv", "--out", "o", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_run_knockout_and_patching_equal_the_library(tmp_path, capsys):
    images, labels = zoo.synthetic(2, seed=3)
    for k, image in enumerate(images):
        image.save(tmp_path / f"img{k}.png")
    csv = tmp_path / "data.csv"
    pd.DataFrame({"image": [f"img{k}.png" for k in range(2)], "mos": labels["mos"]}).to_csv(csv, index=False)
    out = tmp_path / "run"
    code = main(["run", "zoo:tiny-biqa-two-stage", str(csv), "--out", str(out), "--analyses", "knockout,patching",
                 "--patch-source", "zoo:tiny-biqa-one-stage", "--window", "8", "--segments", "decision",
                 "--prompt", zoo.PROMPTS[0]])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "knockout effects at the decision position:" in captured.out
    assert "patching effects at the decision position:" in captured.out
    two, one = vl.load("zoo:tiny-biqa-two-stage"), vl.load("zoo:tiny-biqa-one-stage")
    direct = vl.run(two, from_csv(csv), [
        vl.analyses.KnockoutEffects(segments=["decision"], window=8, prompt=zoo.PROMPTS[0]),
        vl.analyses.PatchingEffects(one, segments=["decision"], prompt=zoo.PROMPTS[0])], progress=False)
    written = RunResult.load(out)
    assert sorted(written.tables) == sorted(direct.tables)
    for name, frame in direct.tables.items():
        pd.testing.assert_frame_equal(written.tables[name], frame, check_dtype=False, obj=name)
    assert len(written["knockout.samples"]) == 2 and len(written["patching.samples"]) == 2 * 9
