"""Bad command lines: usage errors exit 2 with argparse's message naming the option; failures exit 1 with the
library's message in one line (no traceback); no command deletes or overwrites a file it did not write."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import PROMPT, random_image

from vlm_lens.cli import main


@pytest.fixture
def files(tmp_path, checkpoints):
    """``{tmp}``, ``{model}``, ``{image}``, ``{csv}`` (3 readable images with scores) and ``{inf}`` (one infinite
    score) for the command lines below."""
    for k in range(3):
        random_image(k).save(tmp_path / f"i{k}.png")
    pd.DataFrame({"image": [f"i{k}.png" for k in range(3)], "mos": [1.0, 2.0, 3.0]}).to_csv(tmp_path / "s.csv",
                                                                                          index=False)
    pd.DataFrame({"image": ["i0.png", "i1.png"], "mos": [1.0, float("inf")]}).to_csv(tmp_path / "inf.csv",
                                                                                   index=False)
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "results").mkdir()
    (tmp_path / "user" / "results" / "figure1_final.png").write_bytes(b"mine")
    (tmp_path / "a-file").write_text("x")
    return {"tmp": str(tmp_path), "model": checkpoints["gqa"], "image": str(tmp_path / "i0.png"),
            "csv": str(tmp_path / "s.csv"), "inf": str(tmp_path / "inf.csv")}


USAGE = [  # exit 2: refused by the parser, before torch is imported
    (["run", "m", "d.csv", "--out", "o", "--checkpoint-every", "1e3"], "--checkpoint-every: expected an integer >= 1, "
                                                                        "got '1e3'"),
    (["run", "m", "d.csv", "--out", "o", "--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
    (["run", "m", "d.csv", "--out", "o", "--batch-size", "eight"], "--batch-size: expected an integer >= 1, got "
                                                                   "'eight'"),
    (["trace", "m", "i", "p", "--topk", "2.5"], "--topk: expected an integer >= 1, got '2.5'"),
    (["trace", "m", "i", "p", "--generate", "1.5"], "--generate: expected a whole number of tokens >= 0, got '1.5'"),
    (["eval", "m", "d.csv", "--temperature", "0"], "--temperature"),
    (["eval", "m", "d.csv", "--samples", "3", "--temperature", "hot"], "--temperature: expected a number, got 'hot'"),
    (["compare", "a", "b", "--out", "o", "--seed", "-1"], "--seed: expected a whole number >= 0, got -1"),
    (["demo", "--n", "x"], "--n: expected a whole number >= 0, got 'x'"),
    (["run", "m", "d.xlsx", "--out", "o"], "DATASET: expected a .csv or .json file"),
    (["run", "m", "d.csv", "--out", ""], "--out: expected a folder path, got an empty string"),
    (["run", "m", "d.csv", "--out", "  "], "--out: expected a folder path"),
    (["trace", "m", "i", "p", "--out", ""], "--out: expected a folder path"),
    (["eval", "m", "d.csv", "--out", ""], "--out: expected a folder path"),
    (["compare", "a", "b", "--out", ""], "--out: expected a folder path"),
    (["demo", "--out", ""], "--out: expected a folder path"),
]


@pytest.mark.parametrize("argv, message", USAGE, ids=[" ".join(a[:1] + a[-2:]) for a, _ in USAGE])
def test_usage_errors_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


FAILURES = [  # exit 1: the library's error, in one line
    (["trace", "{model}", "{image}", PROMPT, "--dtype", "int8"], "dtype='int8'"),
    (["trace", "{model}", "{image}", PROMPT, "--dtype", "float33"], "dtype='float33'"),
    (["trace", "{model}", "{image}", PROMPT, "--device", "gpu7"], "device='gpu7'"),
    (["trace", "{model}", "{image}", PROMPT, "--out", "{tmp}/a-file"], "is a file"),
    (["trace", "{tmp}/no-such-model", "{image}", PROMPT], "neither a local folder nor a hub id"),
    (["trace", "org/not-cached", "{image}", PROMPT], "HF_HUB_OFFLINE"),
    (["run", "{model}", "{csv}", "--out", "{tmp}/user"], "no run.json"),
    (["run", "{model}", "{csv}", "--out", "{tmp}/user", "--overwrite"], "not a vlm_lens run folder"),
    (["run", "{model}", "{inf}", "--out", "{tmp}/r"], "infinite score(s), rows [1]"),
    (["eval", "{model}", "{csv}", "--out", "{tmp}/a-file"], "--out='"),
    (["eval", "{model}", "{inf}"], "infinite score(s)"),
    (["compare", "{tmp}/user", "{tmp}/user2", "--out", "{tmp}/c"], "holds no finished run"),
]


@pytest.mark.parametrize("argv, message", FAILURES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in FAILURES])
def test_failures_exit_1_in_one_line(argv, message, files, capsys):
    code = main([a.format(**files) for a in argv])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 1 and message in last and "Traceback" not in err, err
    assert last.startswith(f"vlm-lens {argv[0]}: error: ") and "run with --debug" not in last, err
    assert (Path(files["tmp"]) / "user" / "results" / "figure1_final.png").read_bytes() == b"mine"
    assert sorted(p.name for p in (Path(files["tmp"]) / "user").rglob("*")) == ["figure1_final.png", "results"]
