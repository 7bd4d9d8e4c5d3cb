"""What does ``vl.run`` cost next to a plain batched forward, and does its memory stay flat? (run by hand)

One process, one random-init LLaVA (decoder ``--layers`` x ``--hidden``, a (``--image-size`` / 14)^2-token image:
256 tokens at the default 224 px), images of varying size written to disk and read lazily, interleaved rounds,
medians:

- plain:  per batch of ``--batch`` samples: read the images, run the processor on the Q-Align prompt (answer
          prefilled with "The quality of the image is"), one SDPA forward without cache, softmax over the five
          level words at the last position — what a minimal evaluation script does;
- vl.run: ``vl.run(m, dataset, out=tmp)`` with the default analyses (Quality with the per-layer logit lens +
          Attention by segment, image profile and patch grid), checkpoints included.

Throughput ratio = (vl.run samples/s) / (plain samples/s); the target is >= 0.85. Both wall-clock and CPU time
(``time.process_time``, all threads of the process) are reported: on a machine shared with other jobs, wall-clock
rates swing by 2x within a minute, while CPU time measures the work itself.

Peak memory: the plain loop and ``vl.run``, each over 20 and over 200 samples in a fresh subprocess (after a
one-batch warm-up, with glibc's mmap threshold fixed so that freed tensors leave the resident set at once, see
``MALLOC``); peak resident set size during the call minus the size just before it, and its mean over the first and
the second half of the call (sampled every 2 ms). The target is flat: the same at 20 and at 200 samples.

    python benchmarks/run_throughput.py [--samples 160] [--rounds 3] [--layers 8] [--hidden 256] [--image-size 224]
                                        [--batch 8] [--memory-samples 20 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

import vlm_lens as vl

from vlm_lens.runs.datasets import from_table
from vlm_lens.runs.engine import run
from vlm_lens.tracing.logit_lens import target_token_ids

from peak_memory import PeakMemory  # noqa: E402 - a sibling module (benchmarks/ is no package)

PROMPT = "How would you rate the quality of this image?"
#: glibc malloc settings of the memory subprocesses: a fixed mmap threshold returns every large freed block to the
#: system at once (by default the threshold adapts and freed activations linger in the heap for a while), so the
#: resident set size follows the memory actually in use instead of the allocator's high-water mark.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
LEVELS = ["excellent", "good", "fair", "poor", "bad"]


def build(folder: Path, layers: int, hidden: int, image_size: int) -> str:
    from vlm_lens.testing import tiny_llava

    return str(tiny_llava(folder / "model", layers=layers, hidden=hidden, heads=8, kv_heads=8,
                          intermediate=hidden * 11 // 4, vision_hidden=64, vision_layers=1, image_size=image_size,
                          patch=14, max_positions=2048))


def write_images(folder: Path, n: int) -> Path:
    """``n`` noise images of varying size on disk and a CSV (image, mos) naming them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for k in range(n):
        w, h = int(rng.integers(200, 400)), int(rng.integers(200, 400))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{k:04d}.png")
        rows.append({"image": f"{k:04d}.png", "mos": float(rng.uniform(1, 5))})
    pd.DataFrame(rows).to_csv(folder / "scores.csv", index=False)
    return folder / "scores.csv"


def plain(m: vl.LensModel, dataset, batch: int) -> list[float]:
    """The baseline: read, process, forward, level-word softmax; returns the Q-Align scores."""
    tokenizer = m.adapter.tokenizer
    text = m.adapter.format_prompt(PROMPT, 1).text + " The quality of the image is"
    ids = target_token_ids(tokenizer, LEVELS)
    weights = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    scores = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch):
            samples = dataset.samples[start:start + batch]
            images = [dataset.load_image(s) for s in samples]
            inputs = m.processor(images=images, text=[text] * len(images), padding=True, padding_side="left",
                                 return_tensors="pt")
            logits = m.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1]
            scores += (torch.softmax(logits[:, ids], -1) @ weights).tolist()
    return scores


def first(csv: Path | str, n: int):
    """A dataset of the first ``n`` rows of ``csv`` (images read lazily from disk)."""
    return from_table(pd.read_csv(csv).iloc[:n], root=Path(csv).parent)


def memory_child(model: str, csv: str, n: int, batch: int, method: str, threads: int) -> None:
    """Subprocess body: ``method`` over the first ``n`` samples; prints the peak extra memory in bytes."""
    torch.set_num_threads(threads)
    m = vl.load(model)

    def go(dataset):
        if method == "plain":
            return plain(m, dataset, batch)
        return run(m, dataset, out=tempfile.mkdtemp(), batch_size=batch, progress=False)

    go(first(csv, batch))  # warm-up: lazy imports, allocator
    dataset = first(csv, n)
    with PeakMemory() as memory:
        go(dataset)
    print(json.dumps({"n": n, "method": method, "peak": memory.peak, "halves": memory.halves}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=160, help="samples per throughput round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--memory-samples", type=int, nargs=2, default=[20, 200])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 is steadiest on a shared machine)")
    parser.add_argument("--skip-throughput", action="store_true", help="only the memory measurement")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        memory_child(args.child[0], args.child[1], args.memory_samples[0], args.batch, args.child[2], args.threads)
        return

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="vlm_lens_bench_"))
    model = build(root, args.layers, args.hidden, args.image_size)
    csv = write_images(root / "images", max(args.samples, *args.memory_samples))
    print(f"layers={args.layers} hidden={args.hidden} image_tokens={(args.image_size // 14) ** 2} "
          f"batch={args.batch} samples={args.samples} rounds={args.rounds} torch={torch.__version__} "
          f"threads={args.threads}")
    if not args.skip_throughput:
        throughput(vl.load(model), first(csv, args.samples), root, args)
    print("extra memory (MiB)      peak   mean 1st half   mean 2nd half")
    for method in ("plain", "vl.run"):
        for n in args.memory_samples:
            out = subprocess.run([sys.executable, __file__, "--child", model, str(csv), method, "--batch",
                                  str(args.batch), "--memory-samples", str(n), str(n), "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True, env={**os.environ, **MALLOC})
            memory = json.loads(out.stdout.strip().splitlines()[-1])
            first_half, second_half = (h / 2**20 for h in memory["halves"])
            print(f"{method:6s} {n:4d} samples {memory['peak'] / 2**20:8.1f} {first_half:15.1f} {second_half:15.1f}")


def throughput(m: vl.LensModel, dataset, root: Path, args: argparse.Namespace) -> None:
    """Interleaved rounds of the plain loop and vl.run; prints wall-clock and CPU-time rates and their ratio."""
    methods = {"plain": lambda: plain(m, dataset, args.batch),
               "vl.run": lambda: run(m, dataset, out=tempfile.mkdtemp(dir=root), batch_size=args.batch,
                                     progress=False)}
    times: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    for fn in methods.values():  # warm-up
        fn()
    for _ in range(args.rounds):
        for name, fn in methods.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    rate = {name: args.samples / statistics.median(t) for name, t in times.items()}
    cpu_rate = {name: args.samples / statistics.median(t) for name, t in cpu.items()}
    print(f"{'method':8s} {'median s':>9s} {'samples/s':>10s} {'CPU s':>8s} {'samples/CPU s':>14s}   rounds (wall s)")
    for name in methods:
        print(f"{name:8s} {statistics.median(times[name]):9.3f} {rate[name]:10.2f} {statistics.median(cpu[name]):8.3f} "
              f"{cpu_rate[name]:14.2f}   {' '.join(f'{t:.2f}' for t in times[name])}")
    print(f"throughput ratio vl.run / plain = {rate['vl.run'] / rate['plain']:.3f} wall-clock, "
          f"{cpu_rate['vl.run'] / cpu_rate['plain']:.3f} CPU time (target >= 0.85)")

if __name__ == "__main__":
    main()
