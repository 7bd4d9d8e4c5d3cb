"""What does fitting a tuned lens cost as the dataset grows, and how close do the zoo's lenses get? (run by hand)

Cost. On a zoo checkpoint (``--model``), for each dataset size in ``--sizes`` (synthetic images of seed 0), in a fresh
subprocess each (after a warm-up fit on 8 images, with glibc's mmap threshold fixed so that freed tensors leave the
resident set at once):

- fit:      ``vl.TunedLens.fit(m, images, epochs=1, held_out=0, generate=48, batch_size=8, trace_batch=64)``;
- baseline: the tracing alone that the fit does (``vl.trace`` of the same images, 64 at a time, greedy answers of up
            to 48 tokens, every layer and position kept) — in the same process, just before the fit.

Printed per size: wall-clock and CPU seconds (``time.process_time``: on a machine shared with other jobs wall-clock
swings, CPU time measures the work) of both, their ratio (fit / baseline), and the peak extra resident set size of
each (sampled every 2 ms). Memory must not grow with the dataset: the fit holds one trace group at a time.

Quality. For both zoo checkpoints, the KL to the model's output per hidden index of the logit lens and of the shipped
tuned lens on ``--held-out`` images of seed 1 (never trained on), measured again here with the lens-KL analysis, and
the issue's targets: the tuned lens below the logit lens at every hidden index below the last, and its mean over those
at most a quarter of the logit lens's.

    python benchmarks/tuned_lens.py [--sizes 32 64 128 256] [--held-out 256] [--threads 2] [--skip-cost]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

import vlm_lens as vl

from vlm_lens import zoo
from vlm_lens.runs.datasets import from_images
from vlm_lens.runs.lens_kl import LensKL

from peak_memory import PeakMemory  # noqa: E402 - a sibling module (benchmarks/ is no package)

#: glibc malloc settings of the subprocesses (see benchmarks/run_throughput.py).
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
SETTINGS = dict(generate=48, epochs=1, held_out=0, batch_size=8, trace_batch=64, progress=False)


def trace_only(m: vl.LensModel, images) -> None:
    for start in range(0, len(images), SETTINGS["trace_batch"]):
        chunk = images[start:start + SETTINGS["trace_batch"]]
        vl.trace(m, chunk, [zoo.PROMPTS[0]] * len(chunk), generate=SETTINGS["generate"],
                 keep=vl.Keep(attention=False))


def child(model: str, n: int, threads: int) -> None:
    """Subprocess body: the baseline and the fit on ``n`` images; prints one JSON line."""
    torch.set_num_threads(threads)
    m = vl.load(model)
    images = zoo.synthetic(n, seed=0).images
    vl.TunedLens.fit(m, from_images(images[:8]), **{**SETTINGS, "trace_batch": 8})  # warm-up
    base = measured(lambda: trace_only(m, images))
    fit = measured(lambda: vl.TunedLens.fit(m, from_images(images), prompt=zoo.PROMPTS[0], **SETTINGS))
    print(json.dumps({"n": n, "base": base, "fit": fit}))


def measured(work) -> list[float]:
    """``[wall s, CPU s, peak extra RSS bytes]`` of ``work()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    with PeakMemory() as memory:
        work()
    return [time.perf_counter() - wall, time.process_time() - cpu, memory.peak]


def cost(model: str, sizes: list[int], threads: int) -> None:
    print(f"cost of fitting {model} (1 epoch, batch 8, traced 64 at a time, answers of up to 48 tokens), "
          f"torch {torch.__version__}, {threads} threads, load average {os.getloadavg()[0]:.1f}")
    print("images  fit wall s  fit CPU s  trace wall s  trace CPU s  ratio (CPU)  fit peak MiB  trace peak MiB")
    for n in sizes:
        done = subprocess.run([sys.executable, __file__, "--child", model, str(n), "--threads", str(threads)],
                              capture_output=True, text=True, check=True, env={**os.environ, **MALLOC})
        r = json.loads(done.stdout.strip().splitlines()[-1])
        (bw, bc, bp), (fw, fc, fp) = r["base"], r["fit"]
        print(f"{n:6d} {fw:11.1f} {fc:10.1f} {bw:13.1f} {bc:12.1f} {fc / bc:12.2f} {fp / 2**20:13.1f} "
              f"{bp / 2**20:15.1f}")


def quality(n: int) -> None:
    images = zoo.synthetic(n, seed=1).images
    for name in zoo.CHECKPOINTS:
        m = vl.load(f"zoo:{name}")
        lens = vl.TunedLens.load(f"zoo:{name}", m)
        table = vl.run(m, from_images(images), [LensKL(lens, prompt=zoo.PROMPTS[0], generate=48)], batch_size=64,
                       progress=False)["lens_kl.layers"]
        below = table[table.layer < m.adapter.n_layers]
        ratio = float(below["lens"].mean() / below["logit"].mean())
        print(f"\n{name}: KL to the model's output (nats) on {n} held-out images of seed 1, "
              f"{int(table.n_positions.iloc[0])} positions")
        print(table[["layer", "logit", "lens"]].rename(columns={"lens": "tuned"}).round(4).to_string(index=False))
        print(f"tuned below logit at every hidden index < {m.adapter.n_layers}: "
              f"{bool((below['lens'] < below['logit']).all())}; mean tuned / mean logit = {ratio:.3f} "
              f"(target <= 0.25); recorded when fitted: "
              f"{np.mean(lens.held_out.tuned[:-1]) / np.mean(lens.held_out.logit[:-1]):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:tiny-biqa-one-stage")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--held-out", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.threads)
        return
    torch.set_num_threads(args.threads)
    if not args.skip_cost:
        cost(args.model, args.sizes, args.threads)
    if not args.skip_quality:
        quality(args.held_out)


if __name__ == "__main__":
    main()
