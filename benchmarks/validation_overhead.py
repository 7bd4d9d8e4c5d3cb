"""What do the reliability checks cost? (run by hand; prints ratios)

The checks that refuse silent wrong results run on every call: the consistency checks of each new Trace
(``tracing.trace_checks.order_problems``), the lens signature a trace records (``logit_lens.lens_signature``), the
header check of every weight file at load (``models.integrity.check_weight_files``), and the model check of
``Trace.load(..., model=m)``. Baseline: the same calls in the same process with those functions replaced by no-ops;
interleaved rounds, medians.

    python benchmarks/validation_overhead.py [--rounds 15] [--model zoo:tiny-biqa-one-stage]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import vlm_lens as vl
import vlm_lens.tracing.loading as loading
import vlm_lens.tracing.record as record
import vlm_lens.tracing.tracer as tracer


@contextlib.contextmanager
def without_checks():
    saved = (record.order_problems, tracer.lens_signature, loading.check_weight_files, record.check_model)
    record.order_problems = lambda trace, n_pos: []
    tracer.lens_signature = lambda adapter: {}
    loading.check_weight_files = lambda folder: None
    record.check_model = lambda trace, model, folder: None
    try:
        yield
    finally:
        record.order_problems, tracer.lens_signature, loading.check_weight_files, record.check_model = saved


def median_seconds(call: Callable[[], object], rounds: int) -> tuple[float, float]:
    """(with checks, without checks): medians over interleaved rounds."""
    with_checks, without = [], []
    call()  # warm up both paths once
    with without_checks():
        call()
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        with_checks.append(time.perf_counter() - start)
        with without_checks():
            start = time.perf_counter()
            call()
            without.append(time.perf_counter() - start)
    return statistics.median(with_checks), statistics.median(without)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--model", default="zoo:tiny-biqa-one-stage")
    args = parser.parse_args()
    m = vl.load(args.model)
    image = vl.zoo.synthetic(1, seed=1)[0][0]
    prompt = "How would you rate the quality of this image?"
    folder = Path(tempfile.mkdtemp())
    saved = vl.trace(m, image, prompt, generate=16).save(folder / "trace")
    batch = [image] * 8
    calls = {
        "vl.load (zoo checkpoint)": lambda: vl.load(args.model),
        "vl.trace, generate=16": lambda: vl.trace(m, image, prompt, generate=16),
        "vl.trace, batch of 8, no generation": lambda: vl.trace(m, batch, [prompt] * 8),
        "vl.Trace.load(model=m)": lambda: vl.Trace.load(saved, model=m),
    }
    print(f"{'call':40s} {'with checks':>12s} {'without':>10s} {'ratio':>7s}   ({args.rounds} rounds, medians)")
    for name, call in calls.items():
        a, b = median_seconds(call, args.rounds)
        print(f"{name:40s} {a * 1e3:10.2f}ms {b * 1e3:8.2f}ms {a / b:7.3f}")


if __name__ == "__main__":
    main()
