"""``vlm-lens`` end to end in temporary folders: each command's output files, exit codes 0 / 1 / 2, one-line
errors without tracebacks (unless --debug), and --help with examples on every command. The dataset commands
(run, compare, eval) are checked against the library calls they wrap, on the same data."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from conftest import PROMPT, random_image

import vlm_lens as vl
import vlm_lens.runs.engine as runs_module
from vlm_lens import analyses
from vlm_lens.cli import main
from vlm_lens.cli.usage import ANALYSES
from vlm_lens.runs.datasets import from_csv
from vlm_lens.runs.engine import RunResult

COMMANDS = ["demo", "trace", "run", "compare", "eval", "fit-lens"]


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
    (["run", "m", "d.csv", "--out", "o", "--analyses", "quality,lens"],
     "--analyses: unknown analysis 'lens'; choose comma-separated from "
     "quality,attention,instability,grounding"),
    (["run", "m", "d.csv", "--out", "o", "--analyses", "quality,quality"], "each analysis may appear once"),
    (["run", "m", "scores.txt", "--out", "o"],
     "DATASET: expected a .csv or .json file (Q-Align's format), got 'scores.txt'"),
    (["run", "m", "d.csv", "--out", "o", "--score-column", "x", "--no-scores"], "not allowed with argument"),
    (["run", "m", "d.csv", "--out", "o", "--temperature", "2"],
     "--temperature set(s) the sampled answers of the instability analysis, which is not asked for"),
    (["eval", "m", "d.json", "--top-p", "0.9"], "ask for it with --samples K"),
    (["eval", "m", "d.json", "--samples", "1"], "--samples: expected at least 2 answers per image, got 1"),
    (["eval", "m", "d.json", "--top-p", "1.5"], "--top-p: expected a number in (0, 1], got 1.5"),
    (["eval", "m", "d.json", "--n-boot", "many"], "--n-boot: expected a whole number >= 0, got 'many'"),
    (["compare", "a"], "the following arguments are required: RUN_B"),
    (["compare", "a", "b", "--out", "o", "--names", "x"], "--names: expected 2 different names, one per run"),
    (["compare", "runs/x", "more/x", "runs/x", "--out", "o"], "the same run folder is given twice"),
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


@pytest.mark.parametrize("argv, message", [
    (["run", "MODEL", "{tmp}/missing.csv", "--out", "{tmp}/o"], "missing.csv': no such file"),
    (["eval", "MODEL", "{tmp}/no_mos.csv"], "missing column(s) ['mos']; it has ['image', 'MOS']"),
    (["eval", "MODEL", "{tmp}/broken.json"], "is not valid JSON"),
    (["compare", "{tmp}", "{tmp}/o", "--out", "{tmp}/c"], "holds no finished run"),
])
def test_dataset_command_failures_exit_1_in_one_line(argv, message, tmp_path, capsys):
    pd.DataFrame({"image": ["a.png"], "MOS": [1.0]}).to_csv(tmp_path / "no_mos.csv", index=False)
    (tmp_path / "broken.json").write_text('[{"image": "a.png", ')
    assert main([a.format(tmp=tmp_path) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"vlm-lens {argv[0]}: error: ") and message in err, err
    assert "Traceback" not in err


def test_the_analysis_names_are_the_analyses(capsys):
    assert set(ANALYSES) == {getattr(analyses, name).name for name in analyses.__all__ if name != "Reducer"}
    assert main(["run", "--help"]) == 0
    assert ", ".join(ANALYSES) in " ".join(capsys.readouterr().out.split())  # listed in order, whatever the width


# ----------------------------------------------------------------------------------------- dataset commands
MOS = [3.1, 1.2, 4.5, 2.2, 3.9, 2.8]
COLUMNS = ["--image-column", "image_name", "--score-column", "MOS"]


@pytest.fixture
def scores_csv(tmp_path):
    """Six noise images of different sizes, and a CSV naming them with KonIQ's column names."""
    for k in range(len(MOS)):
        random_image(20 + k, (36 + 4 * k, 40)).save(tmp_path / f"img{k}.png")
    path = tmp_path / "scores.csv"
    pd.DataFrame({"image_name": [f"img{k}.png" for k in range(len(MOS))], "MOS": MOS}).to_csv(path, index=False)
    return path


def assert_same_tables(a: dict, b: dict, **kwargs) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], obj=name, **kwargs)


def test_run_end_to_end_equals_the_library(models, checkpoints, scores_csv, tmp_path, capsys):
    table = pd.read_csv(scores_csv)
    pd.concat([table, pd.DataFrame({"image_name": ["gone.png"], "MOS": [1.0]})]).to_csv(scores_csv, index=False)
    out = tmp_path / "runs" / "one"
    code = main(["run", checkpoints["mha"], str(scores_csv), "--out", str(out), *COLUMNS, "--analyses",
                 "quality,attention", "--batch-size", "4", "--n-boot", "20"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err.count("\n") == 1 and captured.err.startswith("vlm-lens run: warning: ")
    assert "1 of 7 image(s) do not exist" in captured.err
    assert "scores: 7 samples, 6 analysed, 1 skipped" in captured.out and "skipped gone.png: " in captured.out

    with pytest.warns(UserWarning, match="1 of 7"):
        dataset = from_csv(scores_csv, image="image_name", score="MOS")
    direct = vl.run(models["mha"], dataset, [analyses.Quality(n_boot=20), analyses.Attention()], batch_size=4,
                    progress=False)
    written = RunResult.load(out)
    assert_same_tables(written.tables, direct.tables, check_dtype=False)
    pd.testing.assert_frame_equal(written.skipped, direct.skipped, check_dtype=False)
    assert [(a["name"], a["config"].get("n_boot")) for a in written.meta["analyses"]] == [("quality", 20),
                                                                                        ("attention", None)]
    for name, frame in written.tables.items():
        assert f"  {name} " in captured.out
        assert pd.read_csv(out / "results" / f"{name}.csv").shape == frame.shape
    srcc = direct["quality.correlations"].query("score == 'qalign' and metric == 'srcc'").value.iloc[0]
    assert f"qalign {srcc:.4f} [" in " ".join(captured.out.split())


def test_run_again_is_loaded_and_a_cut_run_resumes(checkpoints, scores_csv, tmp_path, monkeypatch, capsys):
    argv = ["run", checkpoints["mha"], str(scores_csv), *COLUMNS, "--analyses", "quality", "--n-boot", "10",
            "--batch-size", "2", "--checkpoint-every", "2"]
    assert main(argv + ["--out", str(tmp_path / "reference")]) == 0
    traced, real = [], runs_module.trace_samples

    def cut_at_the_second_batch(*args, **kwargs):
        traced.append(1)
        if len(traced) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runs_module, "trace_samples", cut_at_the_second_batch)
    out = tmp_path / "cut"
    assert main(argv + ["--out", str(out)]) == 130
    assert "vlm-lens run: interrupted" in capsys.readouterr().err
    assert not (out / "results").exists() and json.loads((out / "run.json").read_text())["status"] == "running"

    traced.clear()
    monkeypatch.setattr(runs_module, "trace_samples", lambda *a, **k: traced.append(1) or real(*a, **k))
    assert main(argv + ["--out", str(out)]) == 0
    assert f"resumed the unfinished run in {out}" in capsys.readouterr().out
    assert len(traced) == 2  # batches 2 and 3 of 3; the first was committed before the cut
    assert_same_tables(RunResult.load(out).tables, RunResult.load(tmp_path / "reference").tables, check_exact=True)

    monkeypatch.setattr(runs_module, "trace_samples", lambda *a, **k: pytest.fail("a finished run was recomputed"))
    assert main(argv + ["--out", str(out)]) == 0
    assert "already held this finished run: loaded, not recomputed" in capsys.readouterr().out


def test_run_refuses_a_folder_of_another_model_or_arguments(checkpoints, scores_csv, tmp_path, capsys):
    argv = ["run", str(scores_csv), *COLUMNS, "--analyses", "quality", "--out", str(tmp_path / "r")]
    assert main(["run", checkpoints["mha"], *argv[1:], "--n-boot", "10"]) == 0
    first = RunResult.load(tmp_path / "r").meta["model"]
    capsys.readouterr()
    for model, n_boot, difference in ((checkpoints["mha"], "11", "analyses[0].config.n_boot: 10 -> 11"),
                                      (checkpoints["gqa"], "10", "model.weights_digest")):
        assert main(["run", model, *argv[1:], "--n-boot", n_boot]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("vlm-lens run: error: --out ") and difference in err, err
        assert "--overwrite" in err and "overwrite=True" not in err
        assert "Traceback" not in err
    assert main(["run", checkpoints["gqa"], *argv[1:], "--n-boot", "10", "--overwrite"]) == 0
    assert RunResult.load(tmp_path / "r").meta["model"]["weights_digest"] != first["weights_digest"]
    assert "loaded, not recomputed" not in capsys.readouterr().out


def test_run_on_qalign_json_with_dmos_and_instability(checkpoints, tmp_path, capsys):
    for k in range(4):
        random_image(40 + k).save(tmp_path / f"live{k}.png")
    records = [{"img_path": f"live{k}.png", "gt_score": s} for k, s in enumerate([70.0, 20.0, 55.0, 40.0])]
    (tmp_path / "test_live.json").write_text(json.dumps(records))
    argv = ["run", checkpoints["mha"], str(tmp_path / "test_live.json"), "--n-boot", "10"]
    assert main(argv + ["--out", str(tmp_path / "mos"), "--analyses", "quality"]) == 0
    assert main(argv + ["--out", str(tmp_path / "dmos"), "--dmos", "--analyses", "quality,instability",
                        "--samples", "2", "--temperature", "1.5"]) == 0
    out = capsys.readouterr().out
    assert "DMOS: taken against -score" in out and "instability:" in out
    mos, dmos = RunResult.load(tmp_path / "mos"), RunResult.load(tmp_path / "dmos")
    assert dmos.meta["dataset"]["higher_is_better"] is False and mos.meta["dataset"]["higher_is_better"] is True
    for metric in ("srcc", "plcc"):  # the same scores correlated with -score: the sign flips
        a, b = (r["quality.correlations"].query(f"score == 'qalign' and metric == '{metric}'").value.iloc[0]
                for r in (mos, dmos))
        assert b == pytest.approx(-a, abs=1e-12)
    summary = dmos["instability.summary"].iloc[0]
    assert (summary.k, summary.temperature, summary.top_p, summary.n_images) == (2, 1.5, 1.0, 4)
    assert dmos["instability.repeats"].groupby("id").size().tolist() == [2] * 4


def test_compare_end_to_end_equals_the_library(checkpoints, scores_csv, tmp_path, capsys):
    folders = {}
    for name, shape in (("one-stage", "mha"), ("two-stage", "gqa")):
        folders[name] = tmp_path / "runs" / name
        assert main(["run", checkpoints[shape], str(scores_csv), *COLUMNS, "--out", str(folders[name]),
                     "--n-boot", "10", "--batch-size", "6"]) == 0
    capsys.readouterr()
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, folders.values()), "--out", str(out), "--n-boot", "30"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    expected = vl.compare({name: str(folder) for name, folder in folders.items()}, n_boot=30)
    assert_same_tables({p.name[:-len(".parquet")]: pd.read_parquet(p) for p in out.glob("*.parquet")},
                       expected.tables, check_exact=True)
    assert all((out / f"{name}.csv").exists() for name in expected.tables)
    assert json.loads((out / "comparison.json").read_text()) == {"runs": ["one-stage", "two-stage"],
                                                                "notes": expected.notes}
    assert "runs: one-stage, two-stage" in printed and "different layers" in printed
    for row in expected["correlations"].query("metric == 'srcc'").itertuples():
        assert f"{row.run} {row.score} {row.value:.4f} [" in printed

    same = str(folders["one-stage"])
    assert main(["compare", same, same, "--names", "a,again", "--out", str(tmp_path / "self"), "--n-boot", "30"]) == 0
    differences = pd.read_csv(tmp_path / "self" / "correlation_differences.csv")
    assert set(differences.b) == {"again"} and differences["diff"].abs().max() == 0


def test_eval_prints_and_writes_what_evaluate_returns(models, checkpoints, scores_csv, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", checkpoints["mha"], str(scores_csv), *COLUMNS, "--n-boot", "30", "--samples", "2",
                 "--temperature", "1.5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    dataset = from_csv(scores_csv, image="image_name", score="MOS")
    expected = vl.evaluate(models["mha"], dataset, n_boot=30)
    pd.testing.assert_frame_equal(pd.read_csv(out / "correlations.csv"), expected, check_exact=False, rtol=1e-12)
    lines = {line.split()[0]: line.split() for line in printed.splitlines() if line.split()}
    for score in ("qalign", "good_poor"):
        values = expected.query(f"score == '{score}'").set_index("metric").value
        assert lines[score][1] == f"{values.srcc:.4f}" and lines[score][4] == f"{values.plcc:.4f}"
    assert "scores: 6 samples, 6 scored, 0 skipped" in printed
    unstable = vl.run(models["mha"], dataset, [analyses.Instability(2, temperature=1.5)], progress=False)
    pd.testing.assert_frame_equal(pd.read_csv(out / "instability.csv"), unstable["instability.summary"],
                                  check_dtype=False)


def test_eval_without_a_readable_image_fails_in_one_line(checkpoints, tmp_path, capsys):
    pd.DataFrame({"image": ["gone.png", "lost.png"], "mos": [1.0, 2.0]}).to_csv(tmp_path / "s.csv", index=False)
    assert main(["eval", checkpoints["mha"], str(tmp_path / "s.csv")]) == 1
    warning, error = capsys.readouterr().err.splitlines()
    assert warning.startswith("vlm-lens eval: warning: ") and "2 of 2 image(s) do not exist" in warning
    assert error.startswith("vlm-lens eval: error: ") and "none of its 2 images could be read" in error


def test_debug_shows_the_traceback(checkpoints, tmp_path):
    with pytest.raises(vl.VlmLensError, match="missing.png"):
        main(["trace", "--debug", checkpoints["mha"], str(tmp_path / "missing.png"), PROMPT])


def test_the_installed_command_exits_2_on_bad_usage():
    done = subprocess.run([sys.executable, "-m", "vlm_lens.cli", "trace"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "required" in done.stderr and "Traceback" not in done.stderr
