"""``vlm-lens`` end to end in temporary folders: each command's output files, exit codes 0 / 1 / 2, one-line
errors without tracebacks (unless --debug), and --help with examples on every command."""

from __future__ import annotations

import subprocess
import sys

import pytest

import vlm_lens as vl
from conftest import PROMPT, random_image
from vlm_lens.cli import main

COMMANDS = ["demo", "trace", "run", "compare", "eval"]


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "img.png"
    random_image(7).save(path)
    return str(path)


@pytest.mark.parametrize("command", [None] + COMMANDS)
def test_help_shows_examples(command, capsys):
    assert main(([command] if command else []) + ["--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "vlm-lens" in out


@pytest.mark.parametrize("argv, message", [
    ([], "choose a command"),
    (["trace", "model"], "the following arguments are required: image, prompt"),
    (["trace", "m", "i", "p", "--generate", "-2"], "--generate: expected a whole number of tokens >= 0, got -2"),
    (["trace", "m", "i", "p", "--formats", "png,gif"], "--formats: expected some of png,svg,pdf"),
    (["trace", "m", "i", "p", "--topk", "0"], "--topk: expected an integer >= 1"),
    (["trace", "m", "i", "p", "--colour"], "unrecognized arguments: --colour"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["run", "m", "d"], "the following arguments are required: --out"),
])
def test_bad_usage_exits_2_with_a_clear_message(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_trace_end_to_end(checkpoints, image_file, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["trace", checkpoints["mha"], image_file, PROMPT, "--generate", "3", "--out", str(out), "--html",
                 "--topk", "2", "--targets", "good,poor", "--formats", "png,svg"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "answer:" in captured.out and "logit lens at position" in captured.out
    figures = {p.name for p in (out / "figures").iterdir()}
    names = ["latent_output", "topk", "target_words", "attention", "attention_mass", "patch_overlay"]
    assert figures == {f"{n}.{ext}" for n in names for ext in ("png", "svg")}
    assert all((out / "figures" / f).stat().st_size > 5000 for f in figures)
    assert (out / "report.html").stat().st_size > 50_000
    back = vl.Trace.load(out / "trace")
    assert back.meta["prompt"] == PROMPT and back.meta["generate"] == 3
    lens = (out / "lens_topk.csv").read_text().splitlines()
    assert lens[0] == "layer,pos,rank,token_id,token,prob" and len(lens) == 1 + 2 * len(back.layers) * len(
        back.query_positions)


def test_trace_prints_without_writing(checkpoints, image_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["trace", checkpoints["gqa"], image_file, PROMPT]) == 0
    out = capsys.readouterr().out
    assert "answer:" not in out and "rank" in out
    assert list(tmp_path.iterdir()) == [tmp_path / "img.png"]


def test_failures_exit_1_in_one_line(checkpoints, tmp_path, capsys):
    assert main(["trace", checkpoints["mha"], str(tmp_path / "missing.png"), PROMPT]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vlm-lens trace: error: ") and "missing.png" in err
    assert "Traceback" not in err
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    random_image(0).save(tmp_path / "x.png")
    assert main(["trace", str(not_a_model), str(tmp_path / "x.png"), PROMPT]) == 1
    assert "config.json" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["run", "m", "d", "--out", "o"], ["compare", "a", "b", "--out", "o"],
                                  ["eval", "m", "d"]])
def test_dataset_commands_exist_but_say_not_yet(argv, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not available yet" in err


def test_debug_shows_the_traceback(checkpoints, tmp_path):
    with pytest.raises(vl.VlmLensError, match="missing.png"):
        main(["trace", "--debug", checkpoints["mha"], str(tmp_path / "missing.png"), PROMPT])


def test_demo_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    written = {p.relative_to(tmp_path / "demo").as_posix() for p in (tmp_path / "demo").rglob("*") if p.is_file()}
    assert {"report.html", "image.png", "lens_topk.csv", "trace/trace.json", "figures/latent_output.png",
            "figures/topk.png", "figures/target_words.png", "figures/attention.png"} <= written
    assert "wrote:" in capsys.readouterr().out


def test_the_installed_command_exits_2_on_bad_usage():
    done = subprocess.run([sys.executable, "-m", "vlm_lens.cli", "trace"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "required" in done.stderr and "Traceback" not in done.stderr
