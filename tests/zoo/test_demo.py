"""``vlm-lens demo``: both zoo checkpoints, synthetic images and the user's, every promised file, and a summary whose
answers and scores agree with Hugging Face ``generate`` and the model's own logits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import vlm_lens as vl
from vlm_lens import VlmLensError, zoo
from vlm_lens.biqa.vocabulary import LEVELS
from vlm_lens.cli import main
from vlm_lens.zoo.demo import CHECKPOINTS, NEW_TOKENS, demo

N = 1
PER_IMAGE = {"one-stage_latent.png", "one-stage_topk.png", "two-stage_latent.png", "two-stage_topk.png",
             "compare.png", "compare_latent.png", "one-stage_latent_tuned.png", "two-stage_latent_tuned.png"}


@pytest.fixture(scope="module")
def user_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "my photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def ran(tmp_path_factory, user_image):
    out = tmp_path_factory.mktemp("demo") / "vlm_lens_demo"
    lines: list[str] = []
    table = demo(out, images=[user_image], n=N, progress=False, log=lines.append)
    return out, table, "\n".join(lines)


def _not_blank(path) -> bool:
    pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
    return pixels.std() > 5 and path.stat().st_size > 5_000


def test_writes_every_promised_file(ran):
    out, _, printed = ran
    for name in ["synthetic_0", "my_photo"]:
        assert (out / f"{name}.png").is_file()
        written = {p.name for p in (out / name).iterdir()}
        assert PER_IMAGE <= written, written
        assert all(_not_blank(out / name / f) for f in PER_IMAGE)
    assert _not_blank(out / "attention_by_segment.png") and _not_blank(out / "lens_kl.png")
    assert "summary.csv" in printed and "two-stage" in printed


def test_summary_has_one_row_per_image_and_checkpoint_with_ground_truth(ran):
    out, table, _ = ran
    on_disk = pd.read_csv(out / "summary.csv")
    assert len(on_disk) == len(table) == 2 * (N + 1)
    assert sorted(zip(on_disk["image"], on_disk["checkpoint"])) == sorted(
        (i, c) for i in ["synthetic_0", "my_photo"] for c in CHECKPOINTS)
    _, labels = zoo.synthetic(N, seed=1)
    synthetic = on_disk[on_disk["image"] == "synthetic_0"]
    assert (synthetic["true_level"] == labels.loc[0, "level"]).all()
    assert np.allclose(synthetic["true_mos"], labels.loc[0, "mos"])
    assert on_disk[on_disk["image"] == "my_photo"]["true_mos"].isna().all()
    assert on_disk["level"].isin(LEVELS).all()
    for column in ["attention_image", "attention_description"]:
        assert on_disk[column].between(0, 1).all()


@pytest.mark.parametrize("short", sorted(CHECKPOINTS))
def test_answers_and_scores_match_generate_and_the_models_logits(ran, short):
    """Independent of vlm_lens' tracing: the processor, ``model.generate`` and one plain forward."""
    _, table, _ = ran
    m = vl.load(CHECKPOINTS[short])
    model, processor = m.model, m.processor
    image = zoo.synthetic(1, seed=1).images[0]
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": zoo.PROMPTS[0]}]}],
        add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        logits = model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits[0]
    prompt_length = inputs["input_ids"].shape[1]
    answer = processor.tokenizer.decode(ids[0, prompt_length:], skip_special_tokens=True).strip()
    row = table[(table["image"] == "synthetic_0") & (table["checkpoint"] == short)].iloc[0]
    assert row["answer"] == answer
    words = [processor.tokenizer.convert_ids_to_tokens(int(i)) for i in ids[0]]
    level_pos = max(p for p in range(prompt_length, len(words)) if words[p] in LEVELS and words[p - 1] == "is")
    assert row["level"] == words[level_pos]
    level_ids = processor.tokenizer.convert_tokens_to_ids(list(LEVELS))
    probs = logits[level_pos - 1, level_ids].double().softmax(-1)
    expected = float(probs @ torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64))
    assert row["score"] == pytest.approx(expected, abs=1e-4)


def test_the_command_runs_into_a_folder(tmp_path, capsys):
    assert main(["demo", "--n", "1", "--out", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "summary.csv").is_file() and PER_IMAGE <= {p.name for p in (tmp_path / "d" / "synthetic_0").iterdir()}
    assert "synthetic_0" in capsys.readouterr().out


def test_bad_input_fails_before_loading_anything(tmp_path, capsys):
    with pytest.raises(VlmLensError, match="nothing to trace"):
        demo(tmp_path, n=0, progress=False)
    with pytest.raises(VlmLensError, match="n=-1"):
        demo(tmp_path, n=-1, progress=False)
    missing = tmp_path / "missing.jpg"
    assert main(["demo", str(missing), "--out", str(tmp_path / "d")]) == 1
    error = capsys.readouterr().err
    assert "missing.jpg" in error and "Traceback" not in error
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("short", sorted(CHECKPOINTS))
def test_the_tuned_column_reads_through_the_shipped_lens(ran, short):
    """By hand: the first hidden index at which the translated state (h + A h + b) decoded by the model's norm and
    head puts the generated level word first, at the position before it."""
    _, table, _ = ran
    m = vl.load(CHECKPOINTS[short])
    lens = vl.TunedLens.load(CHECKPOINTS[short], m)
    t = vl.trace(m, zoo.synthetic(1, seed=1).images[0], zoo.PROMPTS[0], generate=NEW_TOKENS)
    words = t.tokens["text"].tolist()
    level_pos = max(p for p in range(t.prompt_length, len(words)) if words[p] in LEVELS and words[p - 1] == "is")
    level = int(t.tokens["id"].iloc[level_pos])
    n = m.adapter.n_layers
    first = None
    for l in range(n + 1):
        h = t.hidden[l, level_pos - 1]
        if l < n:
            h = h + lens.weight[l].detach() @ h + lens.bias[l].detach()
        with torch.no_grad():
            if int(m.model.lm_head(m.adapter.final_norm(h)).argmax()) == level:
                first = l
                break
    row = table[(table["image"] == "synthetic_0") & (table["checkpoint"] == short)].iloc[0]
    assert row["tuned_first_top1"] == first
