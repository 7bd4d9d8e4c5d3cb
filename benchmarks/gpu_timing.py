"""Timing and memory of ``benchmarks/gpu.py``: interleaved rounds, medians, peak memory above the baseline.

Why interleaved rounds: on a shared machine, or a GPU whose clocks move, conditions drift during a run. Calling
every method once per round spreads the drift over all of them, and medians drop the outliers, so ratios taken in
one process stay meaningful where absolute times do not. Device work is asynchronous: each call ends with a
synchronize before the clock is read. Results are published after every round, so that a run stopped at its time
limit keeps the rounds it finished.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` during the call minus what was allocated just before it (the
model's weights and whatever the caller holds); on the CPU, the resident set size sampled every 2 ms, minus the
size before (coarse: the allocator reuses freed memory, so small tensors do not show).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

import vlm_lens as vl

from peak_memory import PeakMemory  # noqa: E402 - a sibling module (benchmarks/ is no package)



def kept_bytes(result: Any) -> int | None:
    """Bytes of the tensors a trace (or a list of traces) kept: hidden states, logits, attention rows."""
    traces = result if isinstance(result, list) else [result]
    if not all(isinstance(t, vl.Trace) for t in traces):
        return None
    return sum(t.hidden.nbytes + t.logits.nbytes + (t.attention.nbytes if t.attention is not None else 0)
               for t in traces)


def summarise(timings: dict[str, Any]) -> dict[str, Any]:
    """Medians of wall-clock and CPU time, the median peak, and the bytes kept."""
    return {"median_s": statistics.median(timings["times_s"]), "times_s": list(timings["times_s"]),
            "median_cpu_s": statistics.median(timings["cpu_times_s"]), "cpu_times_s": list(timings["cpu_times_s"]),
            "peak_extra_bytes": int(statistics.median(timings["peaks"])), "kept_bytes": timings["kept_bytes"]}


def interleaved(report, section: str, methods: dict[str, Callable[[], Any]], *, rounds: int, device: torch.device,
                deadline: float, warmup: int, publish: Callable[[dict[str, dict[str, Any]]], None]
                ) -> dict[str, dict[str, Any]]:
    """``warmup`` untimed calls of each method, then ``rounds`` rounds calling each once; ``publish`` gets the
    summaries after every round. A method that raises is recorded as failed (with the times it had) and left out
    of the later rounds. No round after the first starts past ``deadline``. Returns the last summaries."""
    alive = dict(methods)
    out = {name: {"times_s": [], "cpu_times_s": [], "peaks": [], "kept_bytes": None} for name in methods}

    def call(name: str, fn: Callable[[], Any], timed: bool) -> None:
        try:
            with PeakMemory(device) as peak:
                start, start_cpu = time.perf_counter(), time.process_time()
                result = fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            if timed:
                out[name]["times_s"].append(elapsed)
                out[name]["cpu_times_s"].append(cpu)
                out[name]["peaks"].append(peak.peak)
                out[name]["kept_bytes"] = kept_bytes(result)
            del result
        except Exception as err:  # noqa: BLE001 - recorded; the other methods go on
            del alive[name]
            report.fail(section, name, err, **(summarise(out[name]) if out[name]["times_s"] else {}))

    for _ in range(warmup):
        for name, fn in list(alive.items()):
            call(name, fn, timed=False)
    summaries: dict[str, dict[str, Any]] = {}
    for r in range(rounds):
        if r >= 1 and time.perf_counter() > deadline:
            report.section(section, rounds_cut_at=r)
            break
        for name, fn in list(alive.items()):
            call(name, fn, timed=True)
        summaries = {name: summarise(out[name]) for name in alive}
        publish(summaries)
    return summaries
