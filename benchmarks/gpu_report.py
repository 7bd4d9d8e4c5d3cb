"""The record of one run of ``benchmarks/gpu.py``: ``gpu.json``, rewritten after every measurement, and ``gpu.txt``.

Why rewritten after every measurement: the script runs once on a GPU, under a time limit. A measurement that
raises is recorded (its error and traceback) and the next one runs; a run killed at its limit still leaves, in
the output folder, everything it measured before. ``finished`` in the JSON says whether the run got to its end.

The JSON (``SCHEMA`` 1)::

    {"schema": 1, "finished": bool, "seconds": float, "arguments": {...}, "environment": {...}, "shape": {...},
     "sections": {"exactness" | "forward" | "quality": {"status": "ok" | "failed" | "skipped", "notes": {...},
                  "measurements": {NAME: {"status": "ok" | "failed" | "skipped" | "pending", "seconds": float, ...}}}},
     "targets": [{"name", "value", "target", "met": bool | null}], "failures": [str, ...]}

An exactness measurement holds ``metric, value, tolerance, passed``; a timed one ``median_s, times_s, ratio``
and memory (``peak_extra_bytes``: peak minus what was allocated before the call); a failed one ``error`` and
``traceback``.
"""

from __future__ import annotations

import gc
import json
import os
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

SCHEMA = 1
SECTIONS = ("exactness", "forward", "quality")

#: The issue's targets: trace time over a plain forward, trace peak memory over (plain + kept), quality-run
#: throughput over plain batched generate.
TRACE_OVER_FORWARD = 1.05
MEMORY_SLACK = 1.10
RUN_OVER_GENERATE = 0.90


class Report:
    """Collects measurements and writes ``gpu.json`` / ``gpu.txt`` into ``out`` after each one."""

    def __init__(self, out: Path, arguments: dict[str, Any], environment: dict[str, Any],
                 shape: dict[str, Any]) -> None:
        self.out = out
        self.out.mkdir(parents=True, exist_ok=True)
        self.start = time.perf_counter()
        self.data: dict[str, Any] = {"schema": SCHEMA, "finished": False, "seconds": 0.0, "arguments": arguments,
                                     "environment": environment, "shape": shape, "sections": {}, "targets": [],
                                     "failures": []}
        self.save()

    # ------------------------------------------------------------------------------------------------ recording
    def section(self, name: str, **notes: Any) -> dict[str, Any]:
        entry = self.data["sections"].setdefault(name, {"status": "ok", "notes": {}, "measurements": {}})
        entry["notes"].update(notes)
        self.save()
        return entry

    def record(self, section: str, name: str, **fields: Any) -> dict[str, Any]:
        entry = {"status": "ok", **fields}
        self.section(section)["measurements"][name] = entry
        self.save()
        return entry

    def fail(self, section: str, name: str, error: BaseException, **fields: Any) -> None:
        """Record that ``name`` raised ``error``; free what it left on the device, so the next one can run."""
        self.record(section, name, **fields, status="failed", error=f"{type(error).__name__}: {error}",
                    traceback=traceback.format_exc(limit=12))
        self.data["failures"].append(f"{section} / {name}: {type(error).__name__}: {str(error)[:300]}")
        free_memory()
        self.save()

    def skip(self, section: str, name: str, why: str, status: str = "skipped") -> None:
        self.record(section, name, status=status, why=why)

    @contextmanager
    def measure(self, section: str, name: str) -> Iterator[dict[str, Any]]:
        """``with report.measure(s, n) as entry: entry["value"] = ...`` — recorded, or recorded as failed."""
        entry: dict[str, Any] = {}
        start = time.perf_counter()
        try:
            yield entry
        except Exception as err:  # noqa: BLE001 - one failed measurement must not stop the others
            self.fail(section, name, err, seconds=round(time.perf_counter() - start, 3))
            return
        self.record(section, name, **entry, seconds=round(time.perf_counter() - start, 3))

    def finish(self) -> None:
        self.data["finished"] = True
        self.save()

    # -------------------------------------------------------------------------------------------------- writing
    def save(self) -> None:
        """Write both files atomically (a reader never sees half a file, even if the run is killed)."""
        self.data["seconds"] = round(time.perf_counter() - self.start, 2)
        for section in self.data["sections"].values():
            states = {m["status"] for m in section["measurements"].values()}
            section["status"] = "failed" if "failed" in states else "ok"
        self.data["targets"] = targets(self.data)
        _write(self.out / "gpu.json", json.dumps(self.data, indent=1, default=str))
        _write(self.out / "gpu.txt", table(self.data))


def _write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------- targets
def _measurements(data: dict[str, Any], section: str) -> dict[str, Any]:
    return data["sections"].get(section, {}).get("measurements", {})


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, read off the measurements (``met`` is None while a measurement is missing)."""
    out = []
    forward = _measurements(data, "forward")
    plain, traced = forward.get("forward", {}), forward.get("trace (defaults)", {})
    ratio = traced.get("ratio") if traced.get("status") == "ok" and plain.get("status") == "ok" else None
    out.append({"name": "trace (defaults) time / forward", "value": ratio, "target": f"<= {TRACE_OVER_FORWARD}",
                "met": None if ratio is None else ratio <= TRACE_OVER_FORWARD})
    bound = None
    if ratio is not None and "peak_extra_bytes" in traced and "peak_extra_bytes" in plain:
        bound = (plain["peak_extra_bytes"] + traced["kept_bytes"]) * MEMORY_SLACK
    out.append({"name": "trace (defaults) peak extra memory / ((forward + kept) x 1.1)",
                "value": None if bound is None else traced["peak_extra_bytes"] / bound, "target": "<= 1",
                "met": None if bound is None else traced["peak_extra_bytes"] <= bound})
    for name, entry in _measurements(data, "quality").items():
        if name.startswith("vl.run Quality") and "lens off" not in name:
            value = entry.get("ratio") if entry.get("status") == "ok" else None
            out.append({"name": f"{name} throughput / plain generate", "value": value,
                        "target": f">= {RUN_OVER_GENERATE}",
                        "met": None if value is None else value >= RUN_OVER_GENERATE})
    rows = _measurements(data, "exactness").get("attention rows bf16 vs eager", {})
    out.append({"name": "attention rows bf16 within bf16 rounding of eager", "value": rows.get("value"),
                "target": f"<= {rows.get('tolerance')}", "met": rows.get("passed")})
    return out


# ------------------------------------------------------------------------------------------------------ table
def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float) and value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
        return f"{value:.2e}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _mib(value: Any) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def table(data: dict[str, Any]) -> str:
    """The short table: one line per measurement, then the targets and the failures."""
    env, shape, args = data["environment"], data["shape"], data["arguments"]
    lines = [f"vlm_lens GPU check: {shape.get('description', '')}; {args.get('dtype')} on {env.get('device_name')}; "
             f"torch {env.get('torch')}, transformers {env.get('transformers')}; {data['seconds']:.0f} s"
             f"{'' if data['finished'] else ' (unfinished)'}"]
    sections = data["sections"]
    on_cpu = str(env.get("device_name", "")).startswith("CPU")  # CPU time: steadier than wall time when shared
    if "exactness" in sections:
        lines += ["", f"{'exactness':44s}{'value':>11s}{'tolerance':>11s}  passed"]
        for name, m in sections["exactness"]["measurements"].items():
            if m["status"] != "ok":
                lines.append(f"  {name:42s}{m['status']}: {m.get('why') or m.get('error', '')}"[:118])
            else:
                lines.append(f"  {name:42s}{_num(m.get('value')):>11s}{_num(m.get('tolerance')):>11s}  "
                             f"{_num(m.get('passed'))}")
    if "forward" in sections:
        notes = sections["forward"]["notes"]
        lines += ["", f"{'forward, ' + str(notes.get('positions', '?')) + ' positions':34s}{'median ms':>10s}"
                      f"{'x fwd':>7s}{'x proc+fwd':>11s}{'peak+ MiB':>10s}{'kept MiB':>10s}"
                      f"{'x fwd cpu' if on_cpu else '':>10s}"]
        for name, m in sections["forward"]["measurements"].items():
            if m["status"] != "ok":
                lines.append(f"  {name:32s}{m['status']}: {m.get('why') or m.get('error', '')}"[:118])
                continue
            lines.append(f"  {name:32s}{m['median_s'] * 1e3:10.2f}{_num(m.get('ratio'), 3):>7s}"
                         f"{_num(m.get('ratio_processor'), 3):>11s}{_mib(m.get('peak_extra_bytes')):>10s}"
                         f"{_mib(m.get('kept_bytes')):>10s}{_num(m.get('ratio_cpu'), 3) if on_cpu else '':>10s}")
    if "quality" in sections:
        notes = sections["quality"]["notes"]
        lines += ["", f"{'quality, %s samples, %s new tokens' % (notes.get('samples'), notes.get('new_tokens')):40s}"
                      f"{'samples/s':>10s}{'x plain':>9s}{'peak+ MiB':>11s}{'x plain cpu' if on_cpu else '':>12s}"]
        for name, m in sections["quality"]["measurements"].items():
            if m["status"] != "ok":
                lines.append(f"  {name:38s}{m['status']}: {m.get('why') or m.get('error', '')}"[:118])
                continue
            lines.append(f"  {name:38s}{m['samples_per_s']:10.2f}{_num(m.get('ratio'), 3):>9s}"
                         f"{_mib(m.get('peak_extra_bytes')):>11s}{_num(m.get('ratio_cpu'), 3) if on_cpu else '':>12s}")
    lines += ["", f"{'targets':64s}{'value':>9s}  {'target':10s}met"]
    for t in data["targets"]:
        lines.append(f"  {t['name'][:62]:62s}{_num(t['value']):>9s}  {t['target'][:10]:10s}{_num(t['met'])}")
    lines += ["", "failures: " + ("none" if not data["failures"] else "")]
    lines += [f"  {f}"[:118] for f in data["failures"]]
    return "\n".join(lines) + "\n"
