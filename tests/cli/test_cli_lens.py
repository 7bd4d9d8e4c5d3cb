"""``vlm-lens fit-lens`` and ``--lens FOLDER``: the command fits the lens the library fits on the same data, the
commands that read the lens read it through the folder given, and a folder without a lens (or bad options) fails
before any model is loaded."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import PROMPT, random_image

import vlm_lens as vl
from vlm_lens.cli import main
from vlm_lens.runs.datasets import from_csv
from vlm_lens.runs.engine import RunResult


@pytest.fixture
def images_csv(tmp_path):
    for k in range(8):
        random_image(40 + k, (36 + 4 * (k % 3), 40)).save(tmp_path / f"img{k}.png")
    path = tmp_path / "images.csv"
    pd.DataFrame({"path": [f"img{k}.png" for k in range(8)]}).to_csv(path, index=False)
    return path


FIT = ["--image-column", "path", "--generate", "2", "--epochs", "2", "--batch-size", "3", "--lr", "0.01",
       "--held-out", "0.25", "--seed", "4"]


def test_fit_lens_end_to_end_equals_the_library_and_the_other_commands_read_it(models, checkpoints, images_csv,
                                                                               tmp_path, capsys):
    out = tmp_path / "lens"
    assert main(["fit-lens", checkpoints["mha"], str(images_csv), "--out", str(out), *FIT]) == 0
    printed = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} >= {"lens.json", "lens.safetensors", "fit.json", "held_out_kl.csv",
                                               "held_out_kl.png"}
    assert "KL to the model's output on 2 held-out samples" in printed and f"--lens {out}" in printed
    m = models["mha"]
    direct = vl.TunedLens.fit(m, from_csv(images_csv, image="path", score=None), generate=2, epochs=2,
                              batch_size=3, lr=0.01, held_out=0.25, seed=4, progress=False)
    written = vl.TunedLens.load(out, m)
    assert torch.equal(written.weight, direct.weight) and torch.equal(written.bias, direct.bias)
    pd.testing.assert_frame_equal(pd.read_csv(out / "held_out_kl.csv"), direct.held_out, check_exact=False,
                                  rtol=1e-6)

    image = str(tmp_path / "img0.png")
    assert main(["trace", checkpoints["mha"], image, PROMPT, "--lens", str(out), "--topk", "2"]) == 0
    printed = capsys.readouterr().out
    assert "tuned lens at position" in printed
    t = vl.trace(m, image, PROMPT)
    expected = t.lens(topk=2, positions=[t.prompt_length - 1], lens=written).pivot(index="layer", columns="rank",
                                                                                    values="token")
    assert expected.to_string() in printed

    runs = tmp_path / "runs"
    scores = tmp_path / "scores.csv"
    pd.read_csv(images_csv).assign(mos=range(8)).to_csv(scores, index=False)
    for name, extra in (("tuned", ["--lens", str(out)]), ("logit", [])):
        assert main(["run", checkpoints["mha"], str(scores), "--image-column", "path", "--out", str(runs / name),
                     "--analyses", "quality", "--n-boot", "10", *extra]) == 0
    config = RunResult.load(runs / "tuned").meta["analyses"][0]["config"]["lens"]
    assert config == written.describe()
    capsys.readouterr()
    assert main(["compare", str(runs / "logit"), str(runs / "tuned"), "--out", str(tmp_path / "c"),
                 "--lens", "tuned", "--n-boot", "10"]) == 1
    assert "lens='tuned': the per-layer readings of {'logit': 'logit'}" in capsys.readouterr().err


def test_a_folder_without_a_lens_fails_before_the_model_is_loaded(tmp_path, capsys):
    random_image(0).save(tmp_path / "x.png")
    assert main(["trace", str(tmp_path / "no-model"), str(tmp_path / "x.png"), PROMPT, "--lens",
                 str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vlm-lens trace: error: --lens ") and "no tuned lens there" in err
    assert "config.json" not in err  # the model was not looked at


@pytest.mark.parametrize("argv, message", [
    (["fit-lens", "m", "d.csv"], "the following arguments are required: --out"),
    (["fit-lens", "m", "d.csv", "--out", "o", "--held-out", "1.5"], "--held-out: expected a fraction in [0, 1)"),
    (["fit-lens", "m", "d.csv", "--out", "o", "--lr", "0"], "--lr: expected a number > 0, got 0"),
    (["fit-lens", "m", "d.txt", "--out", "o"], "DATASET: expected a .csv or .json file"),
    (["compare", "a", "b", "--out", "o", "--lens", "best"], "argument --lens: invalid choice: 'best'"),
])
def test_bad_usage_exits_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
