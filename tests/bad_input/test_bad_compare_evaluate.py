"""Bad arguments of vl.compare and vl.evaluate: a run that is not a run, runs that cannot be paired, and datasets
with nothing to correlate are refused — an empty table is never returned as if it were a result."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from conftest import random_image
from refusal import Case, check, params

import vlm_lens as vl
from vlm_lens.biqa.quality import Quality
from vlm_lens.core.errors import DamagedFileError
from vlm_lens.runs.datasets import from_csv, from_images


def _dataset(higher_is_better=True):
    return from_images([random_image(1), random_image(2), random_image(3)], [1.0, 2.0, 3.5],
                       higher_is_better=higher_is_better)


@pytest.fixture(scope="module")
def runs(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    out = {}
    for name, hib in (("a", True), ("b", True), ("dmos", False)):
        out[name] = root / name
        vl.run(models["gqa"], _dataset(hib), [Quality(n_boot=0)], out=out[name], progress=False)
    return out


def _compare(runs, **kwargs):
    return lambda ctx: vl.compare(runs(ctx), **kwargs)


def _damaged_meta(ctx):
    folder = ctx.tmp / "b"
    shutil.copytree(ctx.runs["b"], folder)
    (folder / "results" / "meta.json").write_text("{")
    return folder


CASES = [
    Case("compare-a-list", _compare(lambda ctx: [ctx.runs["a"], ctx.runs["b"]]),
         ["compare() needs a mapping of at least two named runs", "got list"]),
    Case("compare-one-run", _compare(lambda ctx: {"a": ctx.runs["a"]}), ["at least two named runs", "length 1"]),
    Case("compare-a-number-as-a-run", _compare(lambda ctx: {"a": ctx.runs["a"], "b": 3}),
         ["runs['b']=3", "a RunResult", "got int"]),
    Case("compare-none-as-a-run", _compare(lambda ctx: {"a": ctx.runs["a"], "b": None}), ["runs['b']=None"]),
    Case("compare-a-folder-without-a-run", _compare(lambda ctx: {"a": ctx.runs["a"], "b": ctx.tmp}),
         ["holds no finished run"]),
    Case("compare-a-damaged-run", _compare(lambda ctx: {"a": ctx.runs["a"], "b": _damaged_meta(ctx)}),
         ["meta.json", "not readable JSON"], DamagedFileError),
    Case("compare-names-that-collide", _compare(lambda ctx: {1: ctx.runs["a"], "1": ctx.runs["b"]}),
         ["repeat once made strings"]),
    Case("compare-opposite-directions", _compare(lambda ctx: {"a": ctx.runs["a"], "dmos": ctx.runs["dmos"]}),
         ["different score directions (higher_is_better)"]),
    Case("compare-negative-n-boot", _compare(lambda ctx: {"a": ctx.runs["a"], "b": ctx.runs["b"]}, n_boot=-1),
         ["n_boot=-1", ">= 0"]),
    Case("compare-seed-text", _compare(lambda ctx: {"a": ctx.runs["a"], "b": ctx.runs["b"]}, seed="0"),
         ["seed='0'"]),
    Case("comparison-save-into-a-file", lambda ctx: vl.compare({"a": ctx.runs["a"], "b": ctx.runs["b"]}, n_boot=0)
         .save(((ctx.tmp / "f").write_text("x"), ctx.tmp / "f")[1]), ["folder=", "is a file"]),
    Case("comparison-table-unknown", lambda ctx: vl.compare({"a": ctx.runs["a"], "b": ctx.runs["b"]}, n_boot=0)
         ["correlation"], ["no table 'correlation'", "correlations"]),
    Case("evaluate-without-scores", lambda ctx: vl.evaluate(ctx.model, from_images([ctx.image, ctx.image])),
         ["has no scores", "nothing to correlate"], model=True),
    Case("evaluate-every-image-missing", lambda ctx: vl.evaluate(ctx.model, _missing(ctx)),
         ["none of its 2 images could be read", "gone.png"], model=True),
    Case("evaluate-every-image-unreadable", lambda ctx: vl.evaluate(ctx.model, _unreadable(ctx)),
         ["none of its 2 images could be read", "could not be decoded"], model=True),
    Case("evaluate-a-list", lambda ctx: vl.evaluate(ctx.model, [ctx.image]), ["dataset:", "got list"], model=True),
    Case("evaluate-bad-quality-argument", lambda ctx: vl.evaluate(ctx.model, _dataset(), levels=["good"]),
         ["levels=['good']", "at least two level words"], model=True),
]


def _missing(ctx):
    pd.DataFrame({"image": ["gone.png", "lost.png"], "mos": [1.0, 2.0]}).to_csv(ctx.tmp / "s.csv", index=False)
    with pytest.warns(UserWarning, match="2 of 2 image"):
        return from_csv(ctx.tmp / "s.csv")


def _unreadable(ctx):
    for name in ("x.png", "y.png"):
        (ctx.tmp / name).write_bytes(b"not a picture")
    return from_images([ctx.tmp / "x.png", ctx.tmp / "y.png"], [1.0, 2.0])


@pytest.mark.parametrize("case", params(CASES))
def test_refused(case, ctx, runs):
    ctx.extra["runs"] = runs
    check(case, ctx)


def test_a_partly_readable_dataset_is_evaluated_on_what_was_read(tiny, tmp_path):
    """Not every image has to be readable: the correlations count the read ones (n), as vl.run does."""
    random_image(4).save(tmp_path / "ok1.png")
    random_image(5).save(tmp_path / "ok2.png")
    random_image(6).save(tmp_path / "ok3.png")
    (tmp_path / "bad.png").write_bytes(b"no")
    ds = from_images([tmp_path / n for n in ("ok1.png", "bad.png", "ok2.png", "ok3.png")], [1.0, 2.0, 3.0, 4.0])
    table = vl.evaluate(tiny, ds, n_boot=0)
    assert set(table["n"]) == {3}
