"""``TunedLens.fit``: fitting lowers the held-out KL (measured against a naive loop over positions), the same data and
seed give the same bytes, a fit cut short resumes to the identical lens, a finished fit is loaded, other settings are
refused, the model is left exactly as it was, two ranks fit the lens one process fits, and bad input is refused
before anything runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import hook_count, random_image, warm_up

import vlm_lens as vl
import vlm_lens.runs.lens_fit as lens_fit
from vlm_lens.biqa.vocabulary import QALIGN_PROMPT
from vlm_lens.core.errors import DamagedFileError, RunMismatchError
from vlm_lens.runs.datasets import Dataset, from_images

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import fit_tiny  # noqa: E402

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
SETTINGS = dict(generate=2, held_out=0.25, epochs=3, batch_size=3, lr=1e-2, seed=1, progress=False)


@pytest.fixture(scope="module")
def images():
    return [random_image(k, (48 + 4 * (k % 3), 40)) for k in range(16)]


@pytest.fixture(scope="module")
def fitted(models, images):
    return vl.TunedLens.fit(models["gqa"], from_images(images), **SETTINGS)


def naive_kl(model: vl.LensModel, lens: vl.TunedLens, images, prompt: str, generate: int) -> np.ndarray:
    """KL(model output || lens) per hidden index, mean over every position of every image: one trace per image,
    one position at a time, translators applied by hand."""
    n = model.adapter.n_layers
    sums, count = np.zeros((2, n + 1)), 0
    for image in images:
        t = vl.trace(model, image, prompt, generate=generate)
        for p in range(len(t.tokens)):
            with torch.no_grad():
                final = torch.log_softmax(model.model.lm_head(model.adapter.final_norm(t.hidden[n, p])), -1)
                for l in range(n + 1):
                    h = t.hidden[l, p]
                    for k, translated in enumerate((h, h + lens.weight[l] @ h + lens.bias[l] if l < n else h)):
                        q = torch.log_softmax(model.model.lm_head(model.adapter.final_norm(translated)), -1)
                        sums[k, l] += float((final.exp() * (final - q)).sum())
            count += 1
    return sums / count


def test_fitting_lowers_the_held_out_kl_which_equals_a_naive_loop(models, images, fitted):
    m = models["gqa"]
    table = fitted.held_out
    n = m.adapter.n_layers
    assert table["layer"].tolist() == list(range(n + 1))
    below = table[table.layer < n]
    assert (below["tuned"] < below["logit"]).all(), table
    assert table.loc[n, "tuned"] == pytest.approx(0.0, abs=1e-6) and table.loc[n, "logit"] == pytest.approx(0, abs=1e-6)
    held = images[-4:]  # held_out=0.25 of 16: the last 4
    assert fitted.info["held_out"]["samples"] == 4
    reference = naive_kl(m, fitted, held, QALIGN_PROMPT, 2)  # the default prompt: the runs' quality question
    np.testing.assert_allclose(table["logit"], reference[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(table["tuned"], reference[1], rtol=1e-4, atol=1e-6)
    assert fitted.info["settings"]["prompt"] == QALIGN_PROMPT and fitted.info["training"]["steps"] == 3 * 4
    assert fitted.info["training"]["kl_last"] < fitted.info["training"]["kl_first"]


def test_the_same_data_and_seed_give_the_same_bytes(models, images, fitted, tmp_path):
    again = vl.TunedLens.fit(models["gqa"], from_images(images), **SETTINGS)
    assert torch.equal(again.weight, fitted.weight) and torch.equal(again.bias, fitted.bias)
    a, b = fitted.save(tmp_path / "a"), again.save(tmp_path / "b")
    for name in ("lens.safetensors", "lens.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    other = vl.TunedLens.fit(models["gqa"], from_images(images), **{**SETTINGS, "seed": 2})
    assert not torch.equal(other.weight, fitted.weight)  # the seed orders the samples


class Failing(Dataset):
    """Reads images until ``fail_after`` reads, then fails as a killed process would (mid-batch)."""

    fail_after = 10**9
    reads = 0

    def load_image(self, sample):
        type(self).reads += 1
        if type(self).reads > self.fail_after:
            raise KeyboardInterrupt("killed")
        return super().load_image(sample)


def test_a_fit_cut_short_resumes_to_the_identical_lens_and_a_finished_one_is_loaded(models, images, fitted,
                                                                                     tmp_path, monkeypatch):
    m = models["gqa"]
    base = from_images(images)
    data = Failing(base.samples, name=base.name)
    Failing.reads, Failing.fail_after = 0, 16  # the first 16 reads: 5 steps traced, 4 checkpointed (every 2 steps)
    with pytest.raises(KeyboardInterrupt):
        vl.TunedLens.fit(m, data, out=tmp_path / "fit", checkpoint_every=6, **SETTINGS)
    assert (tmp_path / "fit" / "state.safetensors").exists() and not (tmp_path / "fit" / "lens.json").exists()
    Failing.fail_after = 10**9
    resumed = vl.TunedLens.fit(m, data, out=tmp_path / "fit", checkpoint_every=6, **SETTINGS)
    assert torch.equal(resumed.weight, fitted.weight) and torch.equal(resumed.bias, fitted.bias)
    assert resumed.held_out.equals(fitted.held_out)

    def fail(*args, **kwargs):
        raise AssertionError("a finished fit was fitted again")

    monkeypatch.setattr(lens_fit, "trace_samples", fail)
    loaded = vl.TunedLens.fit(m, data, out=tmp_path / "fit", checkpoint_every=6, **SETTINGS)
    assert torch.equal(loaded.weight, fitted.weight)
    with pytest.raises(RunMismatchError, match=r"settings.lr: 0.01 -> 0.02"):
        vl.TunedLens.fit(m, data, out=tmp_path / "fit", **{**SETTINGS, "lr": 2e-2})
    (tmp_path / "fit" / "fit.json").write_text("{")  # cut short by a full disk: said, not a JSONDecodeError
    with pytest.raises(DamagedFileError, match="fit.json' is damaged"):
        vl.TunedLens.fit(m, data, out=tmp_path / "fit", **SETTINGS)


def test_the_model_is_left_exactly_as_it_was(models, images):
    m = models["mha"]
    warm_up(m)
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    flags = [p.requires_grad for p in m.model.parameters()]
    hooks = hook_count(m)
    vl.TunedLens.fit(m, from_images(images[:6]), **{**SETTINGS, "epochs": 1})
    assert all(torch.equal(before[k], v) for k, v in m.model.state_dict().items())
    assert all(p.grad is None for p in m.model.parameters())
    assert [p.requires_grad for p in m.model.parameters()] == flags and hook_count(m) == hooks


@pytest.mark.parametrize("change, message", [
    (dict(dataset=None), "dataset: expected a vl.datasets.Dataset"),
    (dict(lr=0.0), "lr=0.0: expected a learning rate > 0"),
    (dict(held_out=1.0), r"held_out=1.0: expected a fraction in \[0, 1\)"),
    (dict(layers=[0, 5]), r"layers=\[0, 5\]: expected distinct hidden indices in 0..1"),
    (dict(epochs=0), "epochs=0: expected an integer >= 1"),
    (dict(prompt=" "), "prompt=' ': expected a non-empty question"),
])
def test_bad_arguments_are_refused_before_anything_runs(models, images, change, message, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("traced before the arguments were checked")

    monkeypatch.setattr(lens_fit, "trace_samples", fail)
    arguments = {"dataset": from_images(images[:4]), **SETTINGS, **change}
    with pytest.raises(vl.VlmLensError, match=message):
        vl.TunedLens.fit(models["mha"], arguments.pop("dataset"), **arguments)


def test_a_dataset_without_images_is_refused_naming_it(models, images, monkeypatch):
    m = models["mha"]
    warm_up(m)
    hooks = hook_count(m)
    monkeypatch.setattr(lens_fit, "trace_samples", lambda *a, **k: pytest.fail("traced a dataset without images"))
    with pytest.raises(vl.VlmLensError, match=r"dataset: 2 of its 3 samples have no image \(e.g. \['1', '2'\]\)"):
        vl.TunedLens.fit(m, from_images([images[0], None, None]), **SETTINGS)
    assert hook_count(m) == hooks


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed")
def test_two_ranks_fit_the_lens_one_process_fits(models, checkpoints, tmp_path):
    single = vl.TunedLens.fit(models["mha"], fit_tiny.dataset(8), batch_size=4, **fit_tiny.SETTINGS)
    out = tmp_path / "ranks"
    launched = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", str(SCRIPTS / "fit_tiny.py"),
                               checkpoints["mha"], str(out)], capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-4000:]
    ranks = vl.TunedLens.load(out, models["mha"])
    torch.testing.assert_close(ranks.weight, single.weight, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ranks.bias, single.bias, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(ranks.held_out["tuned"], single.held_out["tuned"], rtol=1e-4, atol=1e-6)
    assert ranks.info["held_out"]["samples"] == single.info["held_out"]["samples"] == 2
