"""benchmarks/gpu.py, the prepared GPU check, in its CPU mode on a tiny shape: it runs end to end, its exactness
checks pass, the numbers in its JSON are consistent with each other and with the model's shape, a measurement that
raises is recorded without losing the others, and the time budget stops new sections."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
ARGS = ["--cpu", "--shape", "tiny", "--rounds", "2", "--warmup", "1", "--quality-rounds", "1", "--batches", "2", "3",
        "--samples", "4", "--new-tokens", "2", "--threads", "1"]
EXACTNESS = {"attention rows fp32 vs eager", "attention rows bf16 vs eager", "lens at last layer == logits fp32",
             "lens at last layer == logits bf16", "batch == alone fp32", "batch == alone bf16",
             "host copies == device bf16", "knockout vs eager reference fp32", "knockout vs eager reference bf16",
             "generation under knockout == greedy eager loop fp32"}
FORWARD = {"forward", "processor + forward", "trace (defaults)", "trace (hidden to host)",
           "trace (last layer, last position)", "trace + lens(topk=4)", "HF eager + attentions"}


def module(name: str):
    """The script or one of its sibling modules, imported (benchmarks/ is no package)."""
    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
        loaded = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        return loaded
    finally:
        sys.path.remove(str(SCRIPT.parent))


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), *ARGS], capture_output=True, text=True, env=env,
                          timeout=600)
    return done, json.loads((out / "gpu.json").read_text()), (out / "gpu.txt").read_text()


def test_cpu_mode_runs_and_every_exactness_check_passes(result):
    done, data, text = result
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert data["schema"] == 1 and data["finished"] and data["failures"] == []
    assert set(data["sections"]) == {"exactness", "forward", "quality"}
    assert all(s["status"] == "ok" for s in data["sections"].values())
    checks = data["sections"]["exactness"]["measurements"]
    assert set(checks) == EXACTNESS
    for name, check in checks.items():
        assert check["status"] == "ok" and check["passed"] is True, name
        assert check["value"] <= check["tolerance"], name
    assert text == data_table(data)  # the short table is the JSON's, and names every measurement
    for name in [*EXACTNESS, *FORWARD]:
        assert name in text


def data_table(data):
    return module("gpu_report").table(data)


def test_forward_numbers_are_consistent_with_the_shape(result):
    _, data, _ = result
    forward = data["sections"]["forward"]
    rows, positions, shape = forward["measurements"], forward["notes"]["positions"], data["shape"]
    assert set(rows) == FORWARD
    base = statistics.median(rows["forward"]["times_s"])
    for name, row in rows.items():
        assert len(row["times_s"]) == 2 and row["median_s"] == pytest.approx(statistics.median(row["times_s"]))
        assert row["ratio"] == pytest.approx(row["median_s"] / base)
    # what the defaults keep: float32 hidden states of every layer (0..n) at every position, the rows of the last
    # position in every decoder layer, and its logits
    layers, d, heads, vocab = shape["layers"], shape["hidden"], shape["heads"], shape["vocab"]
    kept = 4 * ((layers + 1) * positions * d + layers * heads * positions + vocab)
    assert rows["trace (defaults)"]["kept_bytes"] == kept == rows["trace (hidden to host)"]["kept_bytes"]
    assert rows["trace (last layer, last position)"]["kept_bytes"] == 4 * (d + vocab)
    assert rows["forward"]["kept_bytes"] is None
    assert positions == (shape["image_size"] // shape["patch"]) ** 2 + 40  # the image and 40 text tokens


def test_quality_numbers_are_consistent(result):
    _, data, _ = result
    quality = data["sections"]["quality"]
    notes, rows = quality["notes"], quality["measurements"]
    assert notes["mean_new_tokens_plain"] == notes["new_tokens"] == 2  # answers never end early
    for batch in (2, 3):
        plain = rows[f"batch {batch}: plain generate"]
        for name in (f"vl.run Quality, batch {batch}", f"vl.run Quality, batch {batch}, lens off"):
            assert rows[name]["ratio"] == pytest.approx(plain["median_s"] / rows[name]["median_s"])
            assert rows[name]["samples_per_s"] == pytest.approx(4 / rows[name]["median_s"])
    targets = {t["name"]: t for t in data["targets"]}
    ratio = rows["vl.run Quality, batch 2"]["ratio"]
    assert targets["vl.run Quality, batch 2 throughput / plain generate"]["met"] == (ratio >= 0.9)
    trace = data["sections"]["forward"]["measurements"]["trace (defaults)"]["ratio"]
    assert targets["trace (defaults) time / forward"]["value"] == trace


def test_a_failed_measurement_is_recorded_and_the_others_kept(tmp_path):
    report_module = module("gpu_report")
    report = report_module.Report(tmp_path, {"dtype": "float32"}, {"device_name": "CPU"}, {"description": "x"})
    with report.measure("exactness", "first") as entry:
        entry.update(value=1.0, tolerance=2.0, passed=True)
    with report.measure("exactness", "second"):
        raise RuntimeError("boom in the second")
    with report.measure("exactness", "third") as entry:
        entry.update(value=0.5, tolerance=2.0, passed=True)
    data = json.loads((tmp_path / "gpu.json").read_text())  # on disk already, before finish()
    checks = data["sections"]["exactness"]["measurements"]
    assert [checks[n]["status"] for n in ("first", "second", "third")] == ["ok", "failed", "ok"]
    assert "boom in the second" in checks["second"]["error"] and "RuntimeError" in checks["second"]["traceback"]
    assert data["sections"]["exactness"]["status"] == "failed" and not data["finished"]
    assert data["failures"] == ["exactness / second: RuntimeError: boom in the second"]
    assert "boom in the second" in (tmp_path / "gpu.txt").read_text()


def test_a_method_that_raises_leaves_the_interleaved_rounds_of_the_others(tmp_path):
    import torch

    timing, report_module = module("gpu_timing"), module("gpu_report")
    report = report_module.Report(tmp_path, {}, {"device_name": "CPU"}, {"description": "x"})
    calls = {"steady": 0, "flaky": 0}
    published = []

    def steady():
        calls["steady"] += 1

    def flaky():
        calls["flaky"] += 1
        if calls["flaky"] == 3:
            raise ValueError("third call fails")

    last = timing.interleaved(report, "forward", {"steady": steady, "flaky": flaky}, rounds=4,
                              device=torch.device("cpu"), deadline=float("inf"), warmup=1,
                              publish=lambda summaries: published.append({k: len(v["times_s"])
                                                                          for k, v in summaries.items()}))
    assert calls == {"steady": 5, "flaky": 3}  # flaky stopped at its failure; steady ran every round
    assert published == [{"steady": 1, "flaky": 1}, {"steady": 2}, {"steady": 3}, {"steady": 4}]
    assert set(last) == {"steady"} and len(last["steady"]["times_s"]) == 4
    failed = report.data["sections"]["forward"]["measurements"]["flaky"]
    assert failed["status"] == "failed" and "third call fails" in failed["error"]
    assert len(failed["times_s"]) == 1  # the round it finished is kept


def test_rounds_stop_at_the_deadline_after_the_first(tmp_path):
    import torch

    timing, report_module = module("gpu_timing"), module("gpu_report")
    report = report_module.Report(tmp_path, {}, {"device_name": "CPU"}, {"description": "x"})
    last = timing.interleaved(report, "quality", {"a": lambda: None}, rounds=5, device=torch.device("cpu"),
                              deadline=0.0, warmup=0, publish=lambda summaries: None)
    assert len(last["a"]["times_s"]) == 1
    assert report.data["sections"]["quality"]["notes"]["rounds_cut_at"] == 1


def test_the_time_budget_stops_new_sections(tmp_path):
    gpu = module("gpu")
    code = gpu.main([str(tmp_path), "--cpu", "--shape", "tiny", "--only", "forward", "quality", "--budget-s", "0"])
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert code == 0 and data["finished"]
    for section in ("forward", "quality"):
        entry = data["sections"][section]["measurements"]["(section)"]
        assert entry["status"] == "skipped" and "time budget" in entry["why"]
