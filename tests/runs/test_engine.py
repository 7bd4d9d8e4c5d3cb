"""vl.run: a run SIGKILLed mid-way and started again ends identical to an uninterrupted one; finished runs are loaded;
a different model or argument set is refused; bad images are skipped and counted; rows leave memory at every
checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import random_image

import vlm_lens.runs.engine as runs_module
from vlm_lens.biqa.attention import Attention
from vlm_lens.biqa.quality import Quality
from vlm_lens.core.errors import VlmLensError
from vlm_lens.runs.checkpoint import RankState
from vlm_lens.runs.datasets import from_images, from_table
from vlm_lens.runs.engine import RunResult, run

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import run_tiny  # noqa: E402


def assert_same_run(a: RunResult, b: RunResult) -> None:
    assert sorted(a.tables) == sorted(b.tables)
    for name in a.tables:
        pd.testing.assert_frame_equal(a.tables[name], b.tables[name], check_exact=True, obj=name)
    pd.testing.assert_frame_equal(a.skipped, b.skipped)
    assert a.meta["n_done"] == b.meta["n_done"]


def test_resume_after_sigkill_equals_uninterrupted(models, checkpoints, tmp_path):
    reference = run(models["mha"], run_tiny.dataset(7), run_tiny.analyses(), out=tmp_path / "reference",
                    batch_size=3, checkpoint_every=3, progress=False)
    out = tmp_path / "killed"
    command = [sys.executable, str(SCRIPTS / "run_tiny.py"), checkpoints["mha"], str(out), "--samples", "7"]
    process = subprocess.Popen(command + ["--delay", "0.25"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = out / "state" / "rank-0-of-1" / "state.safetensors"
    deadline = time.monotonic() + 120
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.4)  # into the next batch
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    assert state.exists() and not (out / "results").exists()
    partial = RankState(state.parent)
    partial.load([])
    assert 1 <= partial.done_batches < 3  # killed after a checkpoint, before the end

    finished = subprocess.run(command, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_same_run(RunResult.load(out), reference)


def test_finished_run_is_loaded_not_recomputed_and_memory_run_agrees(models, tmp_path, monkeypatch):
    m, ds = models["mha"], from_images([random_image(k) for k in range(4)], [1.0, 2.0, 3.0, 4.0])
    first = run(m, ds, [Quality(n_boot=10)], out=tmp_path / "r", batch_size=2, progress=False)
    in_memory = run(m, ds, [Quality(n_boot=10)], batch_size=2, progress=False)
    for name in first.tables:
        pd.testing.assert_frame_equal(first.tables[name], in_memory.tables[name], check_dtype=False, obj=name)

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was recomputed")

    monkeypatch.setattr(runs_module, "trace_samples", fail)
    again = run(m, ds, [Quality(n_boot=10)], out=tmp_path / "r", batch_size=2, progress=False)
    assert_same_run(again, first)
    assert (tmp_path / "r" / "results" / "quality.samples.csv").exists()
    assert again.meta["model"]["weights_digest"] and again.meta["versions"]["vlm_lens"]
    assert again.meta["analyses"][0]["config"]["n_boot"] == 10


def test_other_model_or_arguments_are_refused(models, tmp_path):
    ds = from_images([random_image(k) for k in range(2)], [1.0, 2.0])
    out = tmp_path / "r"
    run(models["mha"], ds, [Quality(n_boot=5)], out=out, batch_size=2, progress=False)
    with pytest.raises(VlmLensError, match=r"analyses\[0\].config.n_boot: 5 -> 6"):
        run(models["mha"], ds, [Quality(n_boot=6)], out=out, batch_size=2, progress=False)
    with pytest.raises(VlmLensError, match=r"batch_size: 2 -> 1"):
        run(models["mha"], ds, [Quality(n_boot=5)], out=out, batch_size=1, progress=False)
    with pytest.raises(VlmLensError, match=r"model.weights_digest.*overwrite=True"):
        run(models["gqa"], ds, [Quality(n_boot=5)], out=out, batch_size=2, progress=False)
    with pytest.raises(VlmLensError, match=r"dataset.fingerprint"):
        run(models["mha"], from_images([random_image(9), random_image(1)], [1.0, 2.0]), [Quality(n_boot=5)],
            out=out, batch_size=2, progress=False)
    other = run(models["gqa"], ds, [Quality(n_boot=5)], out=out, batch_size=2, progress=False, overwrite=True)
    assert other.meta["model"]["name"] == models["gqa"].name


def test_bad_images_are_skipped_and_counted(models, tmp_path):
    random_image(1).save(tmp_path / "ok.png")
    random_image(2).save(tmp_path / "ok2.png")
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    table = pd.DataFrame({"image": ["ok.png", "gone.png", "broken.png", "ok2.png"], "mos": [1.0, 2.0, 3.0, 4.0]})
    with pytest.warns(UserWarning, match="1 of 4"):
        ds = from_table(table, root=tmp_path)
    result = run(models["mha"], ds, [Quality(n_boot=5), Attention()], out=tmp_path / "r", batch_size=3,
                 progress=False)
    skipped = result.skipped
    assert skipped[["index", "id"]].values.tolist() == [[1, "gone.png"], [2, "broken.png"]]
    assert "no such file" in skipped.reason[0] and "could not be decoded" in skipped.reason[1]
    assert (result.meta["n_samples"], result.meta["n_done"], result.meta["n_skipped"]) == (4, 2, 2)
    assert result["quality.samples"]["id"].tolist() == ["ok.png", "ok2.png"]
    assert result["attention.summary"].n_samples.iloc[0] == 2
    assert pd.read_csv(tmp_path / "r" / "results" / "skipped.csv").shape == (2, 4)


def test_rows_leave_memory_at_every_checkpoint(models, tmp_path):
    held: list[int] = []

    class Spy(Quality):
        def update_batch(self, samples, traces):
            held.append(len(self.rows["samples"]))
            super().update_batch(samples, traces)

    ds = from_images([random_image(k, (30 + k, 40)) for k in range(8)], list(range(8)))
    run(models["mha"], ds, [Spy(n_boot=0, lens=False)], out=tmp_path / "r", batch_size=2, checkpoint_every=2,
        progress=False)
    assert held == [0, 0, 0, 0]  # every batch starts with the previous rows on disk
    parts = sorted((tmp_path / "r" / "state" / "rank-0-of-1" / "rows" / "quality.samples").glob("part-*"))
    assert len(parts) == 4


def test_a_cut_commit_is_rolled_back(tmp_path):
    reducer = Quality()
    state = RankState(tmp_path)
    for k in range(2):
        reducer.emit("samples", {"index": k, "id": str(k), "score": float(k)})
        state.done_batches = k + 1
        state.commit([reducer])
    rows = tmp_path / "rows" / "quality.samples"
    pd.DataFrame({"index": [9]}).to_parquet(rows / "part-000003.parquet")  # written, never committed
    (rows / ".part-000004.parquet.abc.tmp").write_bytes(b"half")
    again = RankState(tmp_path)
    again.load([Quality()])
    assert (again.seq, again.done_batches) == (2, 2)
    assert sorted(p.name for p in rows.iterdir()) == ["part-000001.parquet", "part-000002.parquet"]
    assert again.rows(reducer)["samples"]["index"].tolist() == [0, 1]


def test_bad_arguments_and_unwritable_folder(models, tmp_path):
    ds = from_images([random_image(0)])
    (tmp_path / "file").write_text("x")
    with pytest.raises(VlmLensError, match="is not writable"):
        run(models["mha"], ds, [Quality()], out=tmp_path / "file" / "run", progress=False)
    with pytest.raises(VlmLensError, match="batch_size=0"):
        run(models["mha"], ds, batch_size=0)
    with pytest.raises(VlmLensError, match="empty list"):
        run(models["mha"], ds, [])
    with pytest.raises(VlmLensError, match="may appear once"):
        run(models["mha"], ds, [Quality(), Quality(n_boot=3)])
    with pytest.raises(VlmLensError, match="expected a vl.datasets.Dataset"):
        run(models["mha"], [random_image(0)])
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(VlmLensError, match="is not writable"):
            run(models["mha"], ds, [Quality()], out=locked / "run", progress=False)
    assert torch.get_num_threads() >= 1


def test_two_readings_in_one_run_equal_two_runs(models, tmp_path):
    ds = from_images([random_image(60 + k, (40 + 4 * k, 36)) for k in range(4)])
    both = run(models["gqa"], ds, [Attention(), Attention(query="last").named("attention_last")],
               out=tmp_path / "both", batch_size=3, checkpoint_every=3, progress=False)
    decision = run(models["gqa"], ds, [Attention()], batch_size=3, progress=False)
    last = run(models["gqa"], ds, [Attention(query="last")], batch_size=3, progress=False)
    for name, alone in (("attention", decision), ("attention_last", last)):
        for table in ("segments", "layers", "image_profile", "samples", "summary"):
            pd.testing.assert_frame_equal(both[f"{name}.{table}"], alone[f"attention.{table}"], obj=table)
    assert [a["name"] for a in both.meta["analyses"]] == ["attention", "attention_last"]
    again = run(models["gqa"], ds, [Attention(), Attention(query="last").named("attention_last")],
                out=tmp_path / "both", batch_size=3, checkpoint_every=3, progress=False)
    assert_same_run(both, again)  # the folder's fingerprint holds the prefix: loaded, not refused
    assert repr(Attention().named("x")).endswith(".named('x')") and Attention().named("x").fresh().name == "x"
    with pytest.raises(VlmLensError, match=r"named\('attention_2'\)"):
        run(models["gqa"], ds, [Attention(), Attention(query="last")])
    with pytest.raises(VlmLensError, match="lower-case letters"):
        Attention().named("attention.last")
    with pytest.raises(VlmLensError, match="cannot merge"):
        Attention().merge(Attention().named("other"))
