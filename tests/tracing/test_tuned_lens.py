"""The tuned lens as a module and a reader: identity translators are the logit lens bit for bit, the last hidden index
is the model's own logits, every reader equals the translators applied by hand to ``Trace.hidden``, save / load
round-trips bit for bit, and what it cannot read is refused with the argument named and the model untouched."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import PROMPT, hook_count

import vlm_lens as vl
from vlm_lens.testing import tiny_llava
from vlm_lens.tracing.lens import Lens


def by_hand(model: vl.LensModel, hidden: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None):
    """Logits of ``hidden`` translated by ``h + h W^T + b`` (None: no translator), decoded with the model's own
    final norm and ``lm_head``, written out without the lens module."""
    h = hidden.float()
    if weight is not None:
        h = h + h @ weight.T + bias
    with torch.no_grad():
        return model.model.lm_head(model.adapter.final_norm(h)).float()


def randomised(model: vl.LensModel, layers=None, seed: int = 0) -> vl.TunedLens:
    """A tuned lens with random (far from identity) translators."""
    lens = vl.TunedLens(model, layers)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lens.weight.copy_(torch.randn(lens.weight.shape, generator=g) * 0.3)
        lens.bias.copy_(torch.randn(lens.bias.shape, generator=g))
    return lens


def test_identity_translators_reproduce_the_logit_lens_exactly(model, image):
    t = vl.trace(model, image, PROMPT, generate=3)
    lens = vl.TunedLens(model)
    assert isinstance(lens, torch.nn.Module) and isinstance(lens, Lens)
    for l in range(model.adapter.n_layers + 1):
        assert torch.equal(lens(t.hidden[l], l), by_hand(model, t.hidden[l], None, None))
    positions = [0, 5, len(t.tokens) - 1]
    pd_equal = lambda a, b: a.reset_index(drop=True).equals(b.reset_index(drop=True))  # noqa: E731
    assert pd_equal(t.lens(topk=5, positions=positions, lens=lens), t.lens(topk=5, positions=positions))
    assert pd_equal(t.lens_targets(["good", "poor"], lens=lens), t.lens_targets(["good", "poor"]))


def test_the_last_hidden_index_reads_the_models_own_logits(model, image):
    t = vl.trace(model, image, PROMPT, generate=4)
    lens = randomised(model)
    n = model.adapter.n_layers
    last = lens(t.hidden_at(t.query_positions.tolist(), [n])[0], n)
    torch.testing.assert_close(last, t.logits, atol=1e-4, rtol=0)  # the logits of the model's own forward
    first = lens(t.hidden[0], 0)
    assert not torch.allclose(first, by_hand(model, t.hidden[0], None, None), atol=1e-2)  # translators do act


def test_readers_equal_the_translators_applied_to_trace_hidden(models, image):
    m = models["gqa"]
    t = vl.trace(m, image, PROMPT, generate=3)
    lens = randomised(m, seed=1)
    table = t.lens(topk=3, lens=lens)
    targets = t.lens_targets(["good", "bad"], lens=lens)
    good, bad = m.adapter.tokenizer.convert_tokens_to_ids(["good", "bad"])
    for i, l in enumerate(t.layers):
        translator = (lens.weight[lens.layers.index(l)].detach(), lens.bias[lens.layers.index(l)].detach()) \
            if l in lens.layers else (None, None)
        probs = torch.softmax(by_hand(m, t.hidden[i], *translator), -1)  # [pos, vocab]
        for row in table[table.layer == l].itertuples():
            p, ids = probs[row.pos].topk(3)
            assert row.token_id == ids[row.rank - 1].item()
            assert row.prob == pytest.approx(p[row.rank - 1].item(), abs=1e-5)
        for row in targets[targets.layer == l].itertuples():
            token = good if row.target == "good" else bad
            assert row.prob == pytest.approx(probs[row.pos, token].item(), abs=1e-5)
            assert row.rank == int((probs[row.pos] > probs[row.pos, token]).sum()) + 1


def test_save_and_load_round_trip_bit_for_bit(models, image, tmp_path):
    m = models["mha"]
    lens = randomised(m, seed=2)
    lens.info["held_out"] = {"layer": [0, 1, 2], "logit": [1.0, 0.5, 0.0], "tuned": [0.3, 0.1, 0.0]}
    folder = lens.save(tmp_path / "lens")
    assert sorted(p.name for p in folder.iterdir()) == ["lens.json", "lens.safetensors"]
    info = json.loads((folder / "lens.json").read_text())
    assert (info["kind"], info["layers"], info["n_layers"], info["d_model"]) == ("tuned", [0, 1], 2, 64)
    assert info["model"]["weights_digest"] and info["vocab_size"] == m.adapter.output_head.weight.shape[0]
    back = vl.TunedLens.load(folder, m)
    assert torch.equal(back.weight, lens.weight) and torch.equal(back.bias, lens.bias)
    assert back.layers == lens.layers and back.describe() == lens.describe()
    assert back.held_out.equals(lens.held_out)
    t = vl.trace(m, image, PROMPT)
    assert torch.equal(back(t.hidden[1], 1), lens(t.hidden[1], 1))
    assert back.save(tmp_path / "again") and (tmp_path / "again" / "lens.safetensors").read_bytes() == \
        (folder / "lens.safetensors").read_bytes()


def test_a_checkpoint_folder_holding_a_lens_loads(models, checkpoints, tmp_path):
    import shutil

    folder = shutil.copytree(checkpoints["mha"], tmp_path / "ckpt")
    randomised(models["mha"]).save(folder / "tuned_lens")
    m = vl.load(folder)
    assert vl.TunedLens.load(folder, m).layers == [0, 1]


def test_a_lens_of_another_shape_is_refused_and_the_model_is_untouched(models, image, tmp_path):
    folder = randomised(models["mha"]).save(tmp_path / "lens")
    other = models["gqa"]  # 3 decoder layers
    before = vl.trace(other, image, PROMPT)
    hooks = hook_count(other)
    with pytest.raises(vl.VlmLensError, match=r"model: .*another shape \(n_layers 2 \(lens\) vs 3 \(model\)"):
        vl.TunedLens.load(folder, other)
    after = vl.trace(other, image, PROMPT)
    assert torch.equal(before.logits, after.logits) and hook_count(other) == hooks


def test_a_lens_of_other_weights_is_refused_unless_asked(models, image, tmp_path):
    m = models["mha"]
    folder = randomised(m).save(tmp_path / "lens")
    twin = vl.load(tiny_llava(tmp_path / "twin", **{"layers": 2, "heads": 4, "kv_heads": 4, "seed": 11}))
    with pytest.raises(vl.VlmLensError, match="model: the tuned lens .* was fitted on other weights"):
        vl.TunedLens.load(folder, twin)
    loose = vl.TunedLens.load(folder, twin, strict=False)
    t = vl.trace(twin, image, PROMPT)
    assert len(t.lens(topk=2, lens=loose)) == 2 * len(t.layers) * len(t.query_positions)
    with pytest.raises(vl.VlmLensError, match="lens: this tuned lens decodes through another model's weights"):
        t.lens(lens=vl.TunedLens.load(folder, m))  # bound to m, asked to read twin's residual stream


def test_layers_it_cannot_read_are_refused(models, image):
    m = models["gqa"]
    t = vl.trace(m, image, PROMPT)
    partial = vl.TunedLens(m, layers=[0, 2])
    with pytest.raises(vl.VlmLensError, match=r"lens: this tuned lens cannot read hidden indices \[1\]; it reads "
                                              r"0, 2\.\.3"):
        t.lens(lens=partial)
    assert sorted(t.lens(topk=1, layers=[0, 2, 3], lens=partial).layer.unique()) == [0, 2, 3]
    with pytest.raises(vl.VlmLensError, match=r"layer=7: .* that is outside 0\.\.3"):
        partial(t.hidden[0], 7)
    with pytest.raises(vl.VlmLensError, match=r"layer=1: .* it was not fitted on that one"):
        partial(t.hidden[1], 1)
    with pytest.raises(vl.VlmLensError, match=r"layers=\[3\]: expected distinct hidden indices in 0\.\.2"):
        vl.TunedLens(m, layers=[3])
    with pytest.raises(vl.VlmLensError, match="lens='tuned': expected None"):
        t.lens(lens="tuned")
    kept = vl.trace(m, image, PROMPT, keep=vl.Keep(layers=[0, 3]))
    with pytest.raises(vl.VlmLensError, match=r"layers \[1\] were not kept"):
        kept.lens(layers=[1], lens=partial)


def test_missing_or_damaged_folders_are_refused(models, tmp_path):
    m = models["mha"]
    with pytest.raises(vl.VlmLensError, match=r"folder='.*nowhere': no tuned lens there"):
        vl.TunedLens.load(tmp_path / "nowhere", m)
    folder = randomised(m).save(tmp_path / "lens")
    info = json.loads((folder / "lens.json").read_text())
    (folder / "lens.json").write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(vl.VlmLensError, match="lens format 99"):
        vl.TunedLens.load(folder, m)
