"""The command line reads where the level is decided: ``trace`` prints the answer, the level, its Q-Align score and
the decision position and reads the lens there (``--position`` elsewhere, ``--prefill`` for Q-Align); ``eval`` and
``run`` refuse to read a level that is neither prefilled nor generated; ``run --query`` reads several positions in
one run; ``compare`` lists the Holm-corrected significant differences; ``--html`` writes the runs' report; and
transformers stays quiet unless ``--verbose``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import PROMPT, random_image
from test_cli import COLUMNS, MOS, scores_csv  # noqa: F401 - the fixture

import vlm_lens as vl
from vlm_lens import zoo
from vlm_lens.biqa.analyses import Attention
from vlm_lens.biqa.answer import locate
from vlm_lens.biqa.quality import quality
from vlm_lens.cli import main
from vlm_lens.cli.quiet import quiet
from vlm_lens.runs.datasets import from_csv
from vlm_lens.runs.engine import run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def zoo_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("zoo") / "img.png"
    zoo.synthetic(3, seed=1)[0][2].save(path)
    return str(path)


def test_trace_prints_the_level_score_and_decision_position(zoo_image, capsys):
    assert main(["trace", "zoo:tiny-biqa-one-stage", zoo_image, PROMPT, "--generate", "48", "--topk", "2"]) == 0
    out = capsys.readouterr().out
    t = vl.trace(vl.load("zoo:tiny-biqa-one-stage"), zoo_image, PROMPT, generate=48)
    layout, row = locate(t), quality(t).iloc[0]
    assert f"level: {layout.level!r} (generated), Q-Align score {row.score:.3f}, decided at the decision position " \
           f"{layout.decision_pos} (before {layout.level!r})" in out
    assert f"logit lens at position {layout.decision_pos}: the decision position (before {layout.level!r}):" in out
    table = t.lens(topk=2, positions=[layout.decision_pos]).pivot(index="layer", columns="rank", values="token")
    assert table.to_string() in out
    assert main(["trace", "zoo:tiny-biqa-one-stage", zoo_image, PROMPT, "--generate", "48", "--position", "-1"]) == 0
    assert f"logit lens at position {len(t.tokens) - 1} ('</s>'):" in capsys.readouterr().out


def test_trace_with_prefill_reads_the_last_prompt_position(zoo_image, capsys):
    assert main(["trace", "zoo:tiny-biqa-one-stage", zoo_image, PROMPT, "--prefill"]) == 0
    out = capsys.readouterr().out
    t = vl.trace(vl.load("zoo:tiny-biqa-one-stage"), zoo_image, PROMPT, prefill="The quality of the image is")
    row = quality(t).iloc[0]
    assert f"level: {row.level!r} (most probable level word after the prefilled answer), Q-Align score " \
           f"{row.score:.3f}, decided at the decision position {t.prompt_length - 1}" in out
    assert main(["trace", "zoo:tiny-biqa-one-stage", zoo_image, PROMPT]) == 0  # neither prefilled nor generated
    assert "level: none (nothing was generated and the prompt does not end with" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["eval", "run"])
def test_a_level_neither_prefilled_nor_generated_is_refused(command, scores_csv, tmp_path, capsys):  # noqa: F811
    argv = [command, "zoo:tiny-biqa-one-stage", str(scores_csv), *COLUMNS, "--no-prefill"]
    argv += ["--out", str(tmp_path / "r")] if command == "run" else []
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--no-prefill without --generate" in err and "--generate N" in err


def test_run_reads_several_positions_in_one_run(models, checkpoints, scores_csv, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "two"
    assert main(["run", checkpoints["gqa"], str(scores_csv), "--out", str(out), *COLUMNS, "--analyses", "attention",
                 "--query", "last,level", "--html"]) == 0
    printed = capsys.readouterr().out
    assert "report.html" in printed and (out / "report.html").stat().st_size > 10_000
    got = vl.RunResult.load(out)
    dataset = from_csv(scores_csv, image="image_name", score="MOS")
    alone = run(models["gqa"], dataset, [Attention(query="last"), Attention(query="level").named("attention_level")],
                progress=False)
    for table in ("attention.segments", "attention.summary", "attention_level.segments", "attention_level.summary"):
        pd.testing.assert_frame_equal(got[table], alone[table], obj=table)
    assert main(["run", checkpoints["gqa"], str(scores_csv), "--out", str(tmp_path / "x"), *COLUMNS,
                 "--analyses", "quality", "--query", "last"]) == 2
    assert "--query sets the reading position of the attention analysis" in capsys.readouterr().err
    assert main(["run", "m", "d.csv", "--out", "o", "--query", "middle"]) == 2
    assert "unknown query 'middle'" in capsys.readouterr().err


def test_compare_lists_the_significant_differences_and_writes_the_report(checkpoints, scores_csv, tmp_path,  # noqa
                                                                         capsys):
    folders = []
    for name in ("mha", "gqa"):
        folders.append(str(tmp_path / name))
        assert main(["run", checkpoints[name], str(scores_csv), "--out", folders[-1], *COLUMNS, "--n-boot", "10"]) == 0
    capsys.readouterr()
    assert main(["compare", *folders, "--out", str(tmp_path / "cmp"), "--n-boot", "10", "--alpha", "0.5",
                 "--html"]) == 0
    out = capsys.readouterr().out
    c = vl.compare({"mha": folders[0], "gqa": folders[1]}, n_boot=10, alpha=0.5)
    frame = c["attention_differences"]
    assert (f"attention_differences: {int((frame.p_adjusted < 0.5).sum())} of {len(frame)} differences significant "
            "(Holm-adjusted p < 0.5") in out
    if len(c["significant"]):
        assert f"significant differences ({len(c['significant'])}; significant.csv)" in out
    page = (tmp_path / "cmp" / "report.html").read_text()
    assert "Significant differences (Holm-corrected within each table)" in page and "default-src 'none'" in page


def test_quiet_unless_verbose():
    from transformers.utils import logging as hf_logging

    before = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled())
    with quiet(verbose=False):
        assert hf_logging.get_verbosity() == hf_logging.ERROR and not hf_logging.is_progress_bar_enabled()
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == before
    with quiet(verbose=True):
        assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == before


def test_loading_bars_show_only_with_verbose(checkpoints, tmp_path, capsys):
    image = tmp_path / "i.png"
    random_image(1).save(image)
    assert main(["trace", checkpoints["mha"], str(image), PROMPT]) == 0
    assert "Loading weights" not in capsys.readouterr().err  # transformers' per-checkpoint bar
    assert main(["trace", checkpoints["mha"], str(image), PROMPT, "--verbose"]) == 0
    assert "Loading weights" in capsys.readouterr().err


def test_help_quotes_the_default_prompt(capsys):
    for command in ("run", "eval"):
        assert main([command, "--help"]) == 0
        assert f"default: '{PROMPT}'" in " ".join(capsys.readouterr().out.split())


def test_demo_runs_in_a_fresh_interpreter(tmp_path):
    """The shell command loads the library's registrations itself (no earlier import does it for it)."""
    done = subprocess.run([sys.executable, "-m", "vlm_lens.cli", "demo", "--n", "1", "--out", str(tmp_path / "d")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "d" / "summary.csv").is_file() and "Loading weights" not in done.stderr
