"""Bad run arguments and run folders: no user file is ever deleted or overwritten, a damaged run folder is named,
and a run folder is read back as exactly the tables the run wrote."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from conftest import random_image
from refusal import Case, check, params, refuses

import vlm_lens as vl
from vlm_lens.biqa.quality import Quality
from vlm_lens.core.errors import DamagedFileError, RunMismatchError
from vlm_lens.runs.datasets import from_images
from vlm_lens.runs.engine import RunResult
from vlm_lens.runs.folder import discard


def _dataset():
    return from_images([random_image(1), random_image(2)], [1.0, 2.0])


def _analyses():
    return [Quality(n_boot=0, lens=False)]


@pytest.fixture(scope="module")
def finished(models, tmp_path_factory):
    """A finished run folder (copied by the cases that damage it)."""
    folder = tmp_path_factory.mktemp("runs") / "finished"
    vl.run(models["gqa"], _dataset(), _analyses(), out=folder, progress=False)
    return folder


def _run(ctx, out, **kwargs):
    return vl.run(ctx.model, _dataset(), _analyses(), out=out, progress=False, **kwargs)


def _copy(ctx):
    folder = ctx.tmp / "copy"
    shutil.copytree(ctx.finished, folder)
    return folder


def _damaged(relative: str, data: bytes):
    def apply(ctx):
        folder = _copy(ctx)
        (folder / relative).write_bytes(data)
        return folder
    return apply


def _user_folder(base):
    folder = base / "paper"
    (folder / "results").mkdir(parents=True)
    (folder / "results" / "figure1_final.png").write_bytes(b"the user's figure")
    return folder


def _resumable(ctx):
    """A copy of the finished run marked as still running: the next run resumes from its state."""
    folder = _copy(ctx)
    info = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**info, "status": "running"}))
    return folder


def _state(data: bytes):
    def apply(ctx):
        folder = _resumable(ctx)
        (folder / "state" / "rank-0-of-1" / "state.safetensors").write_bytes(data)
        return folder
    return apply


def _args(name, names, **kwargs):
    return Case(f"run-{name}", lambda ctx: vl.run(ctx.model, _dataset(), _analyses(), progress=False, **kwargs),
                names, model=True)


CASES = [
    # arguments of vl.run
    Case("run-model-not-loaded", lambda ctx: vl.run(ctx.model.model, _dataset()), ["model:", "vl.load"], model=True),
    Case("run-dataset-a-list", lambda ctx: vl.run(ctx.model, [random_image(0)]), ["dataset:", "got list"],
         model=True),
    Case("run-dataset-a-table", lambda ctx: vl.run(ctx.model, pd.DataFrame({"image": ["a.png"]})),
         ["dataset:", "got DataFrame"], model=True),
    Case("run-no-analyses", lambda ctx: vl.run(ctx.model, _dataset(), []), ["analyses:", "empty list"], model=True),
    Case("run-analysis-twice", lambda ctx: vl.run(ctx.model, _dataset(), [Quality(), Quality(n_boot=3)]),
         ["may appear once"], model=True),
    Case("run-analysis-a-class", lambda ctx: vl.run(ctx.model, _dataset(), [Quality]), ["analyses:", "type"],
         model=True),
    _args("batch-size-zero", ["batch_size=0", ">= 1"], batch_size=0),
    _args("batch-size-text", ["batch_size='8'", "got str"], batch_size="8"),
    _args("batch-size-float", ["batch_size=2.5"], batch_size=2.5),
    _args("batch-size-bool", ["batch_size=True"], batch_size=True),
    _args("checkpoint-every-zero", ["checkpoint_every=0"], checkpoint_every=0),
    _args("checkpoint-every-float", ["checkpoint_every=1000.0"], checkpoint_every=1e3),
    _args("overwrite-text", ["overwrite='yes'", "True or False"], overwrite="yes"),
    _args("out-empty", ["out=''", "current folder"], out=""),
    _args("out-blank", ["out='  '"], out="  "),
    _args("out-a-number", ["out=3", "got int"], out=3),
    # folders
    Case("out-a-file", lambda ctx: _run(ctx, ((ctx.tmp / "f.txt").write_text("x"), ctx.tmp / "f.txt")[1]),
         ["is a file"], model=True),
    Case("out-under-a-file", lambda ctx: _run(ctx, ((ctx.tmp / "f.txt").write_text("x"), ctx.tmp / "f.txt" / "r")[1]),
         ["is not writable"], model=True),
    Case("out-a-folder-of-user-files", lambda ctx: _run(ctx, _user_folder(ctx.tmp)),
         ["already holds files (results)", "no run.json"], model=True),
    Case("overwrite-a-folder-of-user-files", lambda ctx: _run(ctx, _user_folder(ctx.tmp), overwrite=True),
         ["already holds files", "not a vlm_lens run folder"], model=True),
    Case("out-holding-another-run", lambda ctx: vl.run(ctx.model, _dataset(), [Quality(n_boot=7, lens=False)],
                                                         out=_copy(ctx), progress=False),
         ["holds a run of a different model or with different arguments", "n_boot"], RunMismatchError, model=True),
    Case("run-json-damaged", lambda ctx: _run(ctx, _damaged("run.json", b"{not json")(ctx)),
         ["run.json", "not readable JSON", "overwrite=True"], DamagedFileError, model=True),
    Case("run-json-a-list", lambda ctx: _run(ctx, _damaged("run.json", b"[1, 2]")(ctx)),
         ["run.json", "expected a JSON object"], DamagedFileError, model=True),
    Case("state-damaged", lambda ctx: _run(ctx, _state(b"garbage")(ctx)), ["state.safetensors", "is damaged"],
         DamagedFileError, model=True),
    Case("state-empty", lambda ctx: _run(ctx, _state(b"")(ctx)), ["state.safetensors", "is damaged"],
         DamagedFileError, model=True),
    # reading a run back
    Case("load-a-folder-without-a-run", lambda ctx: RunResult.load(ctx.tmp), ["holds no finished run"]),
    Case("load-a-number", lambda ctx: RunResult.load(3), ["folder=3", "got int"]),
    Case("load-meta-damaged", lambda ctx: RunResult.load(_damaged("results/meta.json", b"{x")(ctx)),
         ["meta.json", "not readable JSON"], DamagedFileError),
    Case("load-meta-of-something-else", lambda ctx: RunResult.load(_damaged("results/meta.json", b'{"a": 1}')(ctx)),
         ["meta.json", "not the meta.json of a vlm_lens run"], DamagedFileError),
    Case("load-table-damaged", lambda ctx: RunResult.load(_damaged("results/quality.samples.parquet", b"PAR1")(ctx)),
         ["quality.samples.parquet", "not a readable parquet"], DamagedFileError),
    Case("load-skipped-damaged", lambda ctx: RunResult.load(_damaged("results/skipped.parquet", b"x")(ctx)),
         ["skipped.parquet", "damaged"], DamagedFileError),
    Case("load-table-deleted", lambda ctx: RunResult.load(
        ((_copy(ctx) / "results" / "quality.samples.parquet").unlink(), ctx.tmp / "copy")[1]),
         ["quality.samples.parquet", "is missing"], DamagedFileError),
    Case("result-table-unknown", lambda ctx: RunResult.load(ctx.finished)["quality.sample"],
         ["no table 'quality.sample'", "quality.samples"]),
]


@pytest.mark.parametrize("case", params(CASES))
def test_refused(case, ctx, finished):
    ctx.extra["finished"] = finished
    check(case, ctx)


def test_user_files_survive_every_refusal_and_overwrite(tiny, tmp_path):
    """A folder the user owns is never written into or emptied: refused with and without overwrite, its file is
    still there byte for byte; and out='' never touches the current folder."""
    folder = _user_folder(tmp_path)
    for overwrite in (False, True):
        refuses(lambda: vl.run(tiny, _dataset(), _analyses(), out=folder, overwrite=overwrite, progress=False),
                ["no run.json"])
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == ["results",
                                                                                  "results/figure1_final.png"]
    assert (folder / "results" / "figure1_final.png").read_bytes() == b"the user's figure"


def test_overwrite_deletes_only_what_the_run_wrote(tiny, tmp_path):
    """The reference is the list of files after a run: what overwrite discards is exactly those, and the user's
    additions (next to the run, inside results/ and inside state/) stay, byte for byte, through a real overwrite."""
    folder = tmp_path / "run"
    vl.run(tiny, _dataset(), _analyses(), out=folder, progress=False)
    written = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"run.json", "results/meta.json", "results/skipped.parquet"} <= written
    mine = {"notes.txt": b"mine", "results/figure1_final.png": b"png", "results/extra.parquet": b"not a table",
            "state/README": b"keep"}
    for name, data in mine.items():
        (folder / name).write_bytes(data)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    discard(copy, ["quality"])
    assert {p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()} == set(mine)

    other = [Quality(n_boot=0, lens=True)]  # other arguments: a new run, only possible with overwrite
    with pytest.raises(RunMismatchError):
        vl.run(tiny, _dataset(), other, out=folder, progress=False)
    again = vl.run(tiny, _dataset(), other, out=folder, progress=False, overwrite=True)
    for name, data in mine.items():
        assert (folder / name).read_bytes() == data, name
    now = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert written <= now and all(n in mine or n in written or n.startswith("state/rank-0-of-1/rows/") for n in now)
    assert sorted(again.tables) == sorted(json.loads((folder / "results" / "meta.json").read_text())["tables"])


def test_a_foreign_parquet_in_results_is_not_a_table(finished, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(finished, folder)
    pd.DataFrame({"a": [1]}).to_parquet(folder / "results" / "my_analysis.parquet")
    pd.DataFrame({"a": [1]}).to_parquet(folder / "results" / "quality.my_own.parquet")
    back = RunResult.load(folder)
    assert sorted(back.tables) == sorted(RunResult.load(finished).tables)
    assert sorted(back.tables) == sorted(back.meta["tables"])


def test_runs_written_before_the_table_list_read_their_analyses_tables(finished, tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(finished, folder)
    meta = json.loads((folder / "results" / "meta.json").read_text())
    listed = meta.pop("tables")
    (folder / "results" / "meta.json").write_text(json.dumps(meta))
    pd.DataFrame({"a": [1]}).to_parquet(folder / "results" / "mine.parquet")
    assert sorted(RunResult.load(folder).tables) == sorted(listed)


def test_a_numpy_batch_size_is_its_value(tiny):
    import numpy as np

    a = vl.run(tiny, _dataset(), _analyses(), batch_size=np.int64(1), progress=False)
    b = vl.run(tiny, _dataset(), _analyses(), batch_size=1, progress=False)
    assert a.meta["batch_size"] == 1 and type(a.meta["batch_size"]) is int
    pd.testing.assert_frame_equal(a["quality.samples"], b["quality.samples"])
