"""What does a sweep of interventions cost, next to plain batched forwards? (run by hand; prints ratios)

The sweep the effect analyses run: one sample, its answer generated once, then ``k`` teacher-forced passes over
that answer, each under its own intervention, ``k`` rows in one batched forward. The target: throughput per
intervention >= 0.8x that of a plain batched forward of the same ``k`` rows. One process, interleaved rounds,
medians; every ratio is (plain time) / (time), so 1.0 = as fast as plain and higher is faster:

- ``trace``:    ``vl.trace`` of the ``k`` rows (``response=`` the answer) without interventions   (the baseline)
- ``hf``:       ``model(**inputs)`` on the same ``k`` rows, straight through transformers, no vlm_lens at all
- ``knockout``: ``vl.trace`` of the ``k`` rows, row ``i`` knocking out the last prompt position's attention to the
                image in one window of decoder layers (SDPA with an edited boolean mask)
- ``ablate``:   row ``i`` zero-ablating the image at hidden index ``i``
- ``patch``:    row ``i`` patching another image's residual stream into the image at hidden index ``i``

and ``generation + sweep``: one generation of the answer plus the knockout sweep, against one generation plus the
plain batched forward (what a sweep costs on top of tracing the answer once).

Model: by default a random-init LLaVA with a 32-layer decoder of width 512 and a 576-token image (as
benchmarks/trace_overhead.py), or ``--model zoo:tiny-biqa-two-stage`` / any checkpoint.

    python benchmarks/interventions.py [--rounds 5] [--k 16] [--layers 32] [--model PATH] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Callable

import numpy as np
import torch
from PIL import Image

import vlm_lens as vl


def build(folder: str, layers: int) -> str:
    from vlm_lens.testing import tiny_llava

    return str(tiny_llava(folder, layers=layers, hidden=512, heads=8, kv_heads=8, intermediate=1376,
                          vision_hidden=64, vision_layers=1, image_size=336, patch=14, max_positions=2048))


def timed(fn: Callable[[], object], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--k", type=int, default=16, help="interventions per sweep (rows per forward)")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--model", help="a checkpoint instead of the random-init LLaVA")
    parser.add_argument("--generate", type=int, default=16, help="tokens of the answer")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.model or build(tempfile.mkdtemp(), args.layers)
    m = vl.load(path, device=args.device)
    rng = np.random.default_rng(0)
    size = m.processor.image_processor.crop_size["height"] if hasattr(m.processor, "image_processor") else 336
    image, other = (Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(2))
    prompt, k = "How would you rate the quality of this image?", args.k
    n_layers = m.adapter.n_layers
    keep = vl.Keep(layers=[n_layers], positions=[-1], query_positions=[-1], attention=False)
    generate = lambda: vl.trace(m, image, prompt, generate=args.generate, keep=keep)  # noqa: E731
    base = generate()
    last = base.prompt_length - 1
    source = vl.trace(m, other, prompt, response=base, keep=vl.Keep(attention=False))
    width = max(1, n_layers // k)
    sweeps = {
        "trace": [None] * k,
        "knockout": [[vl.knockout([last], "image", [(i * width) % n_layers + j for j in range(width)])]
                     for i in range(k)],
        "ablate": [[vl.ablate("image", i % (n_layers + 1))] for i in range(k)],
        "patch": [[vl.patch(source, "image", i % (n_layers + 1))] for i in range(k)],
    }
    images, prompts, answers = [image] * k, [prompt] * k, [base] * k

    def sweep(items):
        return lambda: vl.trace(m, images, prompts, response=answers, intervene=items, keep=keep)

    inputs = m.adapter.forward_inputs(*_batch(m, images, prompts, base))
    inputs = {key: v.to(m.device) if isinstance(v, torch.Tensor) else v for key, v in inputs.items()}
    calls = {name: sweep(items) for name, items in sweeps.items()}
    calls["hf"] = lambda: m.model(**inputs, use_cache=False)
    calls["generation + trace"] = lambda: (generate(), calls["trace"]())
    calls["generation + knockout"] = lambda: (generate(), calls["knockout"]())
    with torch.no_grad():
        for fn in calls.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, fn in calls.items():
                times[name].append(timed(fn, args.device))
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"model: {path} ({n_layers} layers) on {args.device}, {len(base.tokens)} positions, k = {k} rows, "
          f"{args.rounds} rounds; ratio = plain time / time (>= 0.8 is the target)")
    print(f"{'call':<24}{'median s':>10}{'per row ms':>12}{'ratio':>8}")
    for name in ("hf", "trace", "knockout", "ablate", "patch"):
        print(f"{name:<24}{median[name]:>10.3f}{1000 * median[name] / k:>12.2f}{median['trace'] / median[name]:>8.2f}")
    for name in ("generation + trace", "generation + knockout"):
        print(f"{name:<24}{median[name]:>10.3f}{'':>12}{median['generation + trace'] / median[name]:>8.2f}")
    print(f"knockout against hf: {median['hf'] / median['knockout']:.2f}")


def _batch(m, images, prompts, base):
    """Left-padded ``input_ids, attention_mask, model_inputs`` of prompt + answer for each row (all equal)."""
    rendered = [m.adapter.format_prompt(p, 1) for p in prompts]
    encoded = m.adapter.encode([[i] for i in images], rendered)
    ids = torch.cat([encoded.input_ids, torch.tensor([base.response_ids] * len(images))], dim=1)
    return ids, torch.ones_like(ids), encoded.model_inputs


if __name__ == "__main__":
    main()
