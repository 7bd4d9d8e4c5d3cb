"""Bad checkpoints and load arguments: refused before weights are read where possible, and a checkpoint whose
weights do not match its config is refused instead of being completed with random weights."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from refusal import Case, check, params, refuses
from safetensors.torch import load_file, save_file

import vlm_lens as vl
from vlm_lens.core.errors import CheckpointError, UnsupportedModelError


@pytest.fixture
def ckpt(checkpoints, tmp_path):
    """A fresh copy of the tiny grouped-query checkpoint, for a case to damage."""
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoints["gqa"], folder)
    return folder


def _config(edit):
    def apply(folder):
        config = json.loads((folder / "config.json").read_text())
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))
        return folder
    return apply


def _weights(edit):
    def apply(folder):
        path = folder / "model.safetensors"
        save_file(edit(load_file(path)), path, metadata={"format": "pt"})
        return folder
    return apply


def _bytes(edit):
    def apply(folder):
        path = folder / "model.safetensors"
        path.write_bytes(edit(path.read_bytes()))
        return folder
    return apply


def _without(*names):
    def apply(folder):
        for name in names:
            (folder / name).unlink(missing_ok=True)
        return folder
    return apply


def _index(content: str):
    def apply(folder):
        (folder / "model.safetensors.index.json").write_text(content)
        return folder
    return apply


HEAD = "language_model.lm_head.weight"  # the key as the tiny checkpoints store it (transformers renames on load)
NORM = "language_model.model.norm.weight"


def _damaged(name, damage, names, error=CheckpointError, **kwargs):
    return Case(name, lambda ctx: vl.load(damage(ctx.ckpt), **kwargs), names, error)


CASES = [
    # the argument itself
    Case("path-none", lambda ctx: vl.load(None), ["path_or_name=None", "NoneType"]),
    Case("path-int", lambda ctx: vl.load(3), ["path_or_name=3", "got int"]),
    Case("path-empty", lambda ctx: vl.load(""), ["path_or_name=''", "empty string"]),
    Case("path-list", lambda ctx: vl.load([str(ctx.ckpt)]), ["path_or_name=", "got list"]),
    Case("path-absent-folder", lambda ctx: vl.load(str(ctx.tmp / "absent" / "model")),
         ["neither a local folder nor a hub id", "absent/model"]),
    Case("path-a-file", lambda ctx: vl.load(ctx.ckpt / "config.json"), ["is a file"]),
    Case("hub-id-offline-not-cached", lambda ctx: vl.load("some-org/not-cached-model"),
         ["some-org/not-cached-model", "HF_HUB_OFFLINE", "local cache"]),
    Case("zoo-unknown", lambda ctx: vl.load("zoo:tiny-biqa-three-stage"), ["zoo:tiny-biqa-three-stage",
                                                                             "tiny-biqa-one-stage"]),
    # options, refused before anything is read
    Case("dtype-int8", lambda ctx: vl.load(ctx.ckpt, dtype=torch.int8), ["dtype=torch.int8", "floating-point"]),
    Case("dtype-int8-text", lambda ctx: vl.load(ctx.ckpt, dtype="int8"), ["dtype='int8'", "floating-point"]),
    Case("dtype-unknown", lambda ctx: vl.load(ctx.ckpt, dtype="float33"), ["dtype='float33'"]),
    Case("dtype-number", lambda ctx: vl.load(ctx.ckpt, dtype=16), ["dtype=16", "got int"]),
    Case("device-cuda-without-cuda", lambda ctx: vl.load(ctx.ckpt, device="cuda"), ["device='cuda'", "CUDA"],
         marks=[pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")]),
    Case("device-unknown", lambda ctx: vl.load(ctx.ckpt, device="gpu0"), ["device='gpu0'", "not a device"]),
    Case("device-meta", lambda ctx: vl.load(ctx.ckpt, device="meta"), ["device='meta'", "no values"]),
    Case("device-float", lambda ctx: vl.load(ctx.ckpt, device=0.5), ["device=0.5", "got float"]),
    Case("trust-remote-code-text", lambda ctx: vl.load(ctx.ckpt, trust_remote_code="False"),
         ["trust_remote_code='False'", "True or False"]),
    Case("trust-remote-code-int", lambda ctx: vl.load(ctx.ckpt, trust_remote_code=1), ["trust_remote_code=1"]),
    Case("attn-implementation-none", lambda ctx: vl.load(ctx.ckpt, attn_implementation=None),
         ["attn_implementation=None", "string"]),
    _damaged("attn-implementation-unknown", lambda f: f, ["attn_implementation='bogus'"], vl.VlmLensError,
             attn_implementation="bogus"),
    # folders that are not checkpoints
    Case("folder-without-config", lambda ctx: vl.load(ctx.tmp), ["without config.json"]),
    _damaged("config-not-json", lambda f: ((f / "config.json").write_text("{oops"), f)[1], ["config.json",
                                                                                          "not valid JSON"],
             vl.VlmLensError),
    _damaged("config-a-list", lambda f: ((f / "config.json").write_text("[1, 2]"), f)[1], ["no model_type"],
             UnsupportedModelError),
    _damaged("config-without-model-type", _config(lambda c: c.pop("model_type")), ["no model_type"],
             UnsupportedModelError),
    _damaged("unknown-model-type", _config(lambda c: c.update(model_type="wobbly_vlm")),
             ["model_type='wobbly_vlm'", "is not a family vlm_lens supports"], UnsupportedModelError),
    _damaged("remote-code-not-allowed", _config(lambda c: c.update(model_type="wobbly_vlm",
                                                                   auto_map={"AutoModel": "m.Model"})),
             ["model_type='wobbly_vlm'", "trust_remote_code=True"], UnsupportedModelError),
    _damaged("remote-code-allowed-but-absent", _config(lambda c: c.update(model_type="wobbly_vlm",
                                                                          auto_map={"AutoModel": "m.Model"})),
             ["could not load", "wobbly_vlm"], vl.VlmLensError, trust_remote_code=True),
    # weights that do not match the config
    _damaged("config-more-layers-than-weights", _config(lambda c: c["text_config"].update(num_hidden_layers=5)),
             ["weights do not match", "missing (would be random)", "layers.3"]),
    _damaged("config-fewer-layers-than-weights", _config(lambda c: c["text_config"].update(num_hidden_layers=2)),
             ["weights do not match", "unused", "layers.2"]),
    _damaged("weights-without-lm-head", _weights(lambda w: {k: v for k, v in w.items() if k != HEAD}),
             ["missing (would be random)", "lm_head.weight"]),
    _damaged("weights-with-an-extra-tensor", _weights(lambda w: {**w, "extra.weight": torch.zeros(2)}),
             ["unused", "extra.weight"]),
    _damaged("weights-of-another-shape", _weights(lambda w: {**w, NORM: torch.ones(7)}),
             ["of another shape", "norm.weight", "(7,)"]),
    _damaged("weights-truncated", _bytes(lambda b: b[: len(b) // 2]), ["model.safetensors", "damaged"]),
    _damaged("weights-garbage", _bytes(lambda b: b"not safetensors at all"), ["model.safetensors", "damaged"]),
    _damaged("weights-empty", _bytes(lambda b: b""), ["model.safetensors", "0 bytes"]),
    _damaged("weights-absent", _without("model.safetensors"), ["has no weights"]),
    _damaged("index-naming-an-absent-shard",
             _index(json.dumps({"weight_map": {"a": "model-00002-of-00002.safetensors"}})),
             ["model-00002-of-00002.safetensors", "not in the folder"]),
    _damaged("index-not-json", _index("{"), ["model.safetensors.index.json", "weight index"]),
    _damaged("processor-files-absent", _without("tokenizer.json", "tokenizer_config.json",
                                                "preprocessor_config.json", "processor_config.json"),
             ["processor could not be loaded"], vl.VlmLensError),
]


@pytest.mark.parametrize("case", params(CASES))
def test_refused(case, ctx, ckpt):
    ctx.extra["ckpt"] = ckpt
    check(case, ctx)


def test_a_config_that_matches_its_weights_still_loads(ckpt, models):
    """The checks refuse mismatches only: the untouched copy loads, with the weights of the original."""
    m = vl.load(ckpt, dtype="auto")
    original = models["gqa"].model.state_dict()
    assert all(torch.equal(v, original[k]) for k, v in m.model.state_dict().items())


def test_a_refused_load_leaves_loaded_models_alone(ckpt, tiny):
    """A refusal in the middle of a load (after transformers built the model) changes nothing outside it."""
    _config(lambda c: c["text_config"].update(num_hidden_layers=5))(ckpt)
    refuses(lambda: vl.load(ckpt), ["missing (would be random)"], CheckpointError, model=tiny)
