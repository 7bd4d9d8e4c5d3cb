"""Saving a trace where it cannot go, and reading back a saved trace that was damaged, tampered with, or paired
with another model: each refused with the file or argument named — never a lens read from wrong numbers.
Fuzzed: a saved trace with any field of trace.json replaced is either refused or read back unchanged in meaning."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from refusal import Case, check, params, refuses
from safetensors.torch import load_file, save_file

import vlm_lens as vl
from vlm_lens.core.errors import DamagedFileError
from vlm_lens.testing import tiny_llava


@pytest.fixture(scope="session")
def saved(traced, tmp_path_factory):
    return traced.save(tmp_path_factory.mktemp("saved") / "trace")


def _copy(ctx):
    folder = ctx.tmp / "copy"
    shutil.copytree(ctx.saved, folder)
    return folder


def _info(edit):
    """A copy of the saved trace whose trace.json went through ``edit(info)``."""
    def apply(ctx):
        folder = _copy(ctx)
        info = json.loads((folder / "trace.json").read_text())
        edit(info)
        (folder / "trace.json").write_text(json.dumps(info))
        return folder
    return apply


def _tokens(edit):
    def apply(ctx):
        folder = _copy(ctx)
        edit(pd.read_parquet(folder / "tokens.parquet")).to_parquet(folder / "tokens.parquet", index=False)
        return folder
    return apply


def _tensors(edit):
    def apply(ctx):
        folder = _copy(ctx)
        save_file(edit(load_file(folder / "tensors.safetensors")), folder / "tensors.safetensors")
        return folder
    return apply


def _raw(name: str, data: bytes):
    def apply(ctx):
        folder = _copy(ctx)
        (folder / name).write_bytes(data)
        return folder
    return apply


def _set(key, value):
    return _info(lambda info: info.__setitem__(key, value))


def _loaded(name, damage, names, error=DamagedFileError):
    return Case(name, lambda ctx: vl.Trace.load(damage(ctx), model=ctx.model), names, error, model=True)


def _ids(edit):
    return _tokens(lambda t: t.assign(id=edit(t["id"])))


CASES = [
    # saving
    Case("save-into-a-file", lambda ctx: ctx.traced.save(((ctx.tmp / "f").write_text("x"), ctx.tmp / "f")[1]),
         ["path=", "is a file"]),
    Case("save-under-a-file", lambda ctx: ctx.traced.save(((ctx.tmp / "f").write_text("x"), ctx.tmp / "f" / "t")[1]),
         ["path=", "cannot be created"]),
    Case("save-to-an-empty-path", lambda ctx: ctx.traced.save(""), ["path=''", "empty string"]),
    Case("save-to-a-number", lambda ctx: ctx.traced.save(3), ["path=3", "got int"]),
    # the folder
    Case("load-a-folder-of-something-else", lambda ctx: vl.Trace.load(ctx.tmp),
         ["missing tensors.safetensors, tokens.parquet, trace.json"]),
    _loaded("load-without-trace-json", lambda ctx: ((_copy(ctx) / "trace.json").unlink(), ctx.tmp / "copy")[1],
            ["missing trace.json"], vl.VlmLensError),
    Case("load-with-a-path-for-a-model", lambda ctx: vl.Trace.load(ctx.saved, model="checkpoints/llava"),
         ["model:", "got str"]),
    # damaged files
    _loaded("trace-json-not-json", _raw("trace.json", b"{not json"), ["trace.json", "not readable JSON"]),
    _loaded("trace-json-not-utf8", _raw("trace.json", b"\xff\xfe\x00"), ["trace.json", "not readable JSON"]),
    _loaded("trace-json-a-list", _raw("trace.json", b"[1, 2]"), ["trace.json", "expected a JSON object"]),
    _loaded("tensors-garbage", _raw("tensors.safetensors", b"garbage"), ["tensors.safetensors", "not a readable"]),
    _loaded("tensors-empty", _raw("tensors.safetensors", b""), ["tensors.safetensors", "not a readable"]),
    _loaded("tokens-garbage", _raw("tokens.parquet", b"PAR1 garbage"), ["tokens.parquet", "not a readable"]),
    _loaded("tensors-without-hidden", _tensors(lambda t: {k: v for k, v in t.items() if k != "hidden"}),
            ["tensors.safetensors", "['hidden'] are missing"]),
    _loaded("format-of-the-future", _set("format_version", 2), ["trace format 2 is not 1"], vl.VlmLensError),
    # fields of the wrong type
    _loaded("layers-a-string", _set("layers", "0,1,2,3"), ["trace.json", "layers (str, expected list)"]),
    _loaded("prompt-length-a-string", _set("prompt_length", "31"), ["prompt_length (str, expected int)"]),
    _loaded("prompt-length-a-bool", _set("prompt_length", True), ["prompt_length (bool, expected int)"]),
    _loaded("meta-missing", _info(lambda info: info.pop("meta")), ["meta (NoneType, expected dict)"]),
    _loaded("spans-a-list", _set("spans", [1]), ["spans (list, expected dict)"]),
    _loaded("span-without-start", _set("spans", {"image": {"stop": 3}}), ["a span is not"]),
    # values that contradict each other
    _loaded("layers-reversed", _info(lambda info: info["layers"].reverse()), ["layers [3, 2, 1, 0]", "increasing"]),
    _loaded("layers-repeated", _info(lambda info: info.__setitem__("layers", [0, 1, 1, 2])), ["layers [0, 1, 1, 2]"]),
    _loaded("layers-negative", _info(lambda info: info.__setitem__("layers", [-1, 0, 1, 2])), ["layers [-1, 0, 1, 2]"]),
    _loaded("attention-layers-reversed", _info(lambda info: info["attention_layers"].reverse()),
            ["attention_layers [2, 1, 0]"]),
    _loaded("prompt-length-past-the-end", _set("prompt_length", 10_000), ["prompt_length 10000", "[1, 34]"]),
    _loaded("prompt-length-zero", _set("prompt_length", 0), ["prompt_length 0"]),
    _loaded("prompt-length-inside-the-answer", _set("prompt_length", 32), ["prompt_length 32",
                                                                         "where the response segment starts"]),
    _loaded("span-past-the-end", _info(lambda info: info["spans"]["prompt"].__setitem__("stop", 99)),
            ["spans ['prompt'] outside [0, 34]"]),
    _loaded("token-id-past-the-vocabulary", _ids(lambda ids: ids.where(ids.index != len(ids) - 1, 10**6)),
            ["token ids must be integers, in [0, vocab=77)"]),
    _loaded("token-id-negative", _ids(lambda ids: ids.where(ids.index != len(ids) - 1, -5)), ["token ids"]),
    _loaded("token-id-not-a-number", _ids(lambda ids: ids.astype(str).where(ids.index != 0, "x")), ["token ids"]),
    _loaded("token-positions-shuffled", _tokens(lambda t: t.assign(pos=t["pos"][::-1].to_numpy())),
            ["tokens.pos must be 0..33"]),
    _loaded("token-segment-unknown", _tokens(lambda t: t.assign(segment="body")), ["unknown segments"]),
    _loaded("hidden-of-integers", _tensors(lambda t: {**t, "hidden": t["hidden"].to(torch.int8)}),
            ["hidden must hold floating-point values"]),
    _loaded("hidden-with-a-layer-dropped", _tensors(lambda t: {**t, "hidden": t["hidden"][:-1].contiguous()}),
            ["hidden (3, 34, 64) must be [layer=4"]),
    _loaded("query-position-past-the-end", _tensors(lambda t: {**t, "query_positions": t["query_positions"] + 50}),
            ["query_positions outside [0, 34)"]),
    _loaded("kept-position-negative", _tensors(lambda t: {**t, "positions": t["positions"] - 1}),
            ["positions outside [0, 34)"]),
    _loaded("logits-of-another-vocabulary", _tensors(lambda t: {**t, "logits": t["logits"][:, :50].contiguous()}),
            ["token ids must be integers, in [0, vocab=50)"]),
    # another model
    Case("model-of-another-size", lambda ctx: vl.Trace.load(ctx.saved, model=ctx.other_size),
         ["is not the model the trace", "d_model: 64 -> 32"], model=True),
    Case("model-of-the-same-shape-other-weights", lambda ctx: vl.Trace.load(ctx.saved, model=ctx.other_weights),
         ["is not the model the trace", "output head weights differ"], model=True),
    Case("old-trace-and-model-of-another-size",
         lambda ctx: vl.Trace.load(_info(lambda info: info["meta"].pop("lens_check"))(ctx), model=ctx.other_size),
         ["is not the model the trace", "d_model: 64 -> 32"], model=True),
]


@pytest.fixture(scope="module")
def others(tmp_path_factory):
    root = tmp_path_factory.mktemp("others")
    return {"other_size": vl.load(tiny_llava(root / "small", layers=3, hidden=32, seed=5)),
            "other_weights": vl.load(tiny_llava(root / "same-shape", layers=3, kv_heads=2, seed=9))}


@pytest.mark.parametrize("case", params(CASES))
def test_refused(case, ctx, traced, saved, others):
    ctx.extra.update(traced=traced, saved=saved, **others)
    check(case, ctx)


def test_the_model_it_was_made_with_is_accepted_in_any_float_dtype(saved, traced, checkpoints):
    """The check compares the lens' own weights (final norm, output head), so the same checkpoint loaded in
    bfloat16 passes, and its lens agrees with the float32 lens to bfloat16 precision."""
    half = vl.load(checkpoints["gqa"], dtype="bfloat16")
    back = vl.Trace.load(saved, model=half)
    top = back.lens(topk=1, positions=[-1])
    assert top.query("layer == 0").token_id.tolist() == traced.lens(topk=1, positions=[-1]).query(
        "layer == 0").token_id.tolist()


def test_a_model_less_trace_reads_the_tensors(saved, traced):
    back = vl.Trace.load(saved)
    assert back.model is None and torch.equal(back.hidden, traced.hidden)
    refuses(back.lens, ["no model attached", "model=vl.load"])


#: Replacement values for the fuzz: types and values a hand edit or a mix-up could leave in trace.json.
_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 40), st.floats(allow_nan=True), st.text(max_size=4),
                    st.lists(st.integers(-2, 40), max_size=6), st.dictionaries(st.text(max_size=3),
                                                                               st.integers(0, 40), max_size=2))


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["layers", "attention_layers", "prompt_length", "spans", "meta", "format_version"]),
       value=_values)
def test_fuzzed_trace_json_is_refused_or_read_faithfully(saved, traced, tiny, tmp_path, key, value):
    folder = tmp_path / "fuzz"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(saved, folder)
    info = json.loads((folder / "trace.json").read_text())
    info[key] = value
    (folder / "trace.json").write_text(json.dumps(info))
    try:
        back = vl.Trace.load(folder, model=tiny)
    except vl.VlmLensError as err:
        assert str(folder) in str(err)
        return
    # accepted: then every index it reads is the one of the original trace (a no-op edit, or one that the trace
    # does not read, like a meta of the right type)
    assert back.layers == traced.layers and back.attention_layers == traced.attention_layers
    assert back.prompt_length == traced.prompt_length and back.spans == traced.spans
    pd.testing.assert_frame_equal(back.lens(topk=2, positions=[-1]), traced.lens(topk=2, positions=[-1]))
