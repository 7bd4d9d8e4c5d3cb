"""What does tracing cost, next to a plain forward and the alternatives? (run by hand; prints ratios)

One process, one random-init LLaVA (32 decoder layers, hidden 512, a 24 x 24 = 576-token image + ~20 text
tokens), interleaved rounds, medians:

- plain:    ``model(**inputs)`` with SDPA attention                                    = 1.00
- vlm_lens: ``vl.trace`` keeping every layer's hidden state at every position, attention rows of 16 query
            positions in every layer, then ``Trace.lens(topk=4)`` at those positions
- eager:    the same weights with ``attn_implementation="eager"``,
            ``output_attentions=True, output_hidden_states=True``
- nnsight:  ``NNsight(model).trace(...)`` saving every decoder layer's output (if nnsight is installed)

Peak extra memory is the peak resident set size during the call minus the size just before it (CPU; sampled
every 2 ms), or ``torch.cuda.max_memory_allocated`` growth on a GPU.

    python benchmarks/trace_overhead.py [--rounds 5] [--layers 32] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image

import vlm_lens as vl

from peak_memory import PeakMemory  # noqa: E402 - a sibling module (benchmarks/ is no package)



def build(folder: str, layers: int) -> str:
    from vlm_lens.testing import tiny_llava

    # 336 px / patch 14 -> 24 x 24 = 576 image tokens; a small vision tower keeps the cost in the decoder
    return str(tiny_llava(folder, layers=layers, hidden=512, heads=8, kv_heads=8, intermediate=1376,
                          vision_hidden=64, vision_layers=1, image_size=336, patch=14, max_positions=2048))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    from transformers import AutoModelForImageTextToText

    folder = build(tempfile.mkdtemp(), args.layers)
    m = vl.load(folder, device=args.device)
    eager = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="eager").to(args.device).eval()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    prompt = "How would you rate the quality of this image? Describe it in one word and rate it."
    text = m.adapter.format_prompt(prompt, 1).text
    inputs = {k: v.to(args.device) for k, v in m.processor(images=image, text=text, return_tensors="pt").items()}
    n_pos = inputs["input_ids"].shape[1]
    queries = list(range(-args.queries, 0))

    def plain():
        return m.model(**inputs, use_cache=False)

    def traced():
        t = vl.trace(m, image, prompt, keep=vl.Keep(query_positions=queries))
        return t.lens(topk=4)

    def hf_eager():
        return eager(**inputs, use_cache=False, output_attentions=True, output_hidden_states=True)

    methods = {"plain SDPA forward": plain, "vlm_lens trace + lens": traced, "HF eager (attn + hidden)": hf_eager}
    try:
        from nnsight import NNsight

        wrapped = NNsight(m.model)

        def with_nnsight():
            saved = []
            with vl.trace(wrapped, **inputs, use_cache=False):
                for layer in wrapped.model.language_model.layers:
                    saved.append(layer.output.save())
            return saved

        methods["nnsight (layer outputs)"] = with_nnsight
    except ImportError:
        print("nnsight not installed: pip install -e '.[bench]' to include it")

    times = {name: [] for name in methods}
    peaks = {name: [] for name in methods}
    with torch.no_grad():
        for fn in methods.values():  # warm-up (allocator, kernels, lazy hooks)
            fn()
        for _ in range(args.rounds):
            for name, fn in methods.items():
                with PeakMemory(args.device) as memory:
                    start = time.perf_counter()
                    fn()
                    if args.device == "cuda":
                        torch.cuda.synchronize()
                    times[name].append(time.perf_counter() - start)
                peaks[name].append(memory.peak)

    base = statistics.median(times["plain SDPA forward"])
    print(f"device={args.device} layers={args.layers} hidden=512 positions={n_pos} queries={args.queries} "
          f"rounds={args.rounds} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"{'method':28s} {'median s':>9s} {'ratio':>7s} {'peak extra MiB':>15s}")
    for name in methods:
        median = statistics.median(times[name])
        print(f"{name:28s} {median:9.3f} {median / base:7.2f} {statistics.median(peaks[name]) / 2**20:15.1f}")


if __name__ == "__main__":
    main()
