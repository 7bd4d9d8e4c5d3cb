"""vl.run under torchrun: two CPU processes (gloo) each reduce their batches, and the merged result equals the
single-process run (per-sample tables exactly: the batches are the same; sums up to float64 summation order)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from vlm_lens.runs.engine import RunResult, run

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import run_tiny  # noqa: E402

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed")
def test_two_ranks_equal_one_process(models, checkpoints, tmp_path):
    single = run(models["mha"], run_tiny.dataset(5), run_tiny.analyses(), out=tmp_path / "single", batch_size=2,
                 checkpoint_every=2, progress=False)
    out = tmp_path / "ranks"
    launched = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", str(SCRIPTS / "run_tiny.py"),
                               checkpoints["mha"], str(out), "--samples", "5", "--batch-size", "2", "--every", "2"],
                              capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-4000:]
    merged = RunResult.load(out)
    assert merged.meta["world_size"] == 2 and merged.meta["n_done"] == 5
    assert sorted(p.name for p in (out / "state").iterdir()) == ["rank-0-of-2", "rank-1-of-2"]
    assert sorted(merged.tables) == sorted(single.tables)
    for name in single.tables:
        pd.testing.assert_frame_equal(merged.tables[name], single.tables[name], check_exact=False, rtol=1e-9,
                                      atol=1e-12, obj=name)
    per_rank = [len(pd.read_parquet(p)) for p in sorted(out.glob("state/*/rows/quality.samples/*.parquet"))]
    assert sum(per_rank) == 5 and len(per_rank) >= 2
