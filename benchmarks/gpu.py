"""One prepared check of exactness, overhead and memory at 7B shape, for a GPU at hand; CI runs its CPU mode.

Why one script: a GPU may be at hand rarely and briefly (minutes of GPU time, all tries together). Everything the
project wants to know from one — are attention rows, the lens and batching exact with CUDA kernels and bf16, what
does tracing cost next to a plain forward, how much memory, how fast is a dataset run — is measured in one
command that fits in five minutes on one H100, writes ``gpu.json`` and ``gpu.txt`` to the folder it is given
after every measurement (see ``gpu_report.py``), records a measurement that fails and goes on with the next one,
and stops starting new measurements when its time budget is spent. The same code runs on the CPU with a small
shape (``--cpu``), and the test suite runs it on a tiny one, so that it cannot rot while no GPU is at hand.

The model: a random-init LLaVA-1.5 built in memory directly on the device (``vlm_lens.testing.random_llava``):
``--shape 7b`` is LLaVA-1.5-7B's decoder (32 layers, d_model 4096, 32 heads, MLP 11008, vocabulary 32064) in bf16
behind a small vision tower (336 px, patch 14: 576 image tokens) and a 40-token question. The output head's row
of the end-of-sequence token is zeroed, so that every generated answer has its full length in both the plain and
the traced run.

Sections (``--only`` picks some):

- ``exactness`` (``gpu_exactness.py``): attention rows vs HF eager (fp32, bf16), lens at the last layer == logits,
  batch == alone, host copies == device copies, a knockout against eager attention with hand-edited masks — on a
  model of the shape's width with ``exact_layers`` layers;
- ``forward``: interleaved rounds of a plain SDPA forward (preprocessed inputs; logits of the last position only,
  as ``vl.trace`` computes them only where it keeps them), processor + forward, ``vl.trace``
  with the defaults (every hidden state kept on the device, rows of the last position in every layer), with the
  hidden states kept on the host, with one layer at one position kept, trace + ``lens(topk=4)``, and HF eager with
  ``output_attentions``; medians, ratios, peak memory (``torch.cuda.max_memory_allocated`` above what was
  allocated before the call; on the CPU the resident set size, sampled);
- ``quality``: ``vl.run`` with ``vl.analyses.Quality(generate=N)`` (Q-Align prompt and prefill, per-layer lens;
  also with ``lens=False``) against plain batched ``generate`` of the same prompts, at each ``--batches`` size:
  interleaved rounds, samples per second, ratio, peak memory.

Run it on the GPU (one command, ~2-3 minutes on an H100; the budget stops new measurements at 270 s)::

    python benchmarks/gpu.py OUT                                  # 7b shape, bf16, cuda
    python benchmarks/gpu.py OUT --cpu                            # small shape, float32, CPU
    python benchmarks/gpu.py OUT --cpu --shape tiny --rounds 2    # what the test suite runs

Exit status: 0 when every measurement ran and every exactness check passed, 1 otherwise (the files say which).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, however the script is started
from gpu_exactness import run_exactness  # noqa: E402
from gpu_report import SECTIONS, Report, free_memory  # noqa: E402
from gpu_timing import interleaved  # noqa: E402

import vlm_lens as vl  # noqa: E402
from vlm_lens.biqa.vocabulary import ANSWER_PREFIX, LEVELS, QALIGN_PROMPT  # noqa: E402
from vlm_lens.testing.llava import random_llava  # noqa: E402

#: 40 text tokens with the chat template (the tiny word tokenizer: one token per word or punctuation mark).
PROMPT = ("How would you rate the quality of this image? Describe its brightness, contrast, colour, noise, blur "
          "and compression artifacts in one word each, then rate the overall quality.")
PROMPTS = [PROMPT, "rate it", "what is the overall quality of this picture ? describe it in one word"]


@dataclass(frozen=True)
class Shape:
    """A LLaVA-1.5 shape: the decoder, the vision tower, and the layers of the exactness model (same width)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    vision_hidden: int
    vision_layers: int
    image_size: int
    patch: int
    exact_layers: int

    def describe(self, name: str) -> str:
        return (f"{name}: {self.layers} layers x d_model {self.hidden}, {self.heads} heads ({self.kv_heads} kv), "
                f"MLP {self.intermediate}, vocab {self.vocab}, {(self.image_size // self.patch) ** 2} image tokens")


SHAPES = {
    "7b": Shape(32, 4096, 32, 32, 11008, 32064, 256, 2, 336, 14, 4),     # LLaVA-1.5-7B's decoder, a small tower
    "small": Shape(8, 512, 8, 8, 1376, 32064, 64, 1, 336, 14, 4),       # the same proportions, for a CPU
    "tiny": Shape(2, 64, 4, 2, 128, 512, 32, 1, 32, 8, 2),              # seconds on a CPU: the test suite's
}


# ------------------------------------------------------------------------------------------------------- setup
def noise_image(seed: int, size: tuple[int, int] = (400, 300)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def build(shape: Shape, device: torch.device, dtype: torch.dtype, layers: int | None = None) -> vl.LensModel:
    """A random-init LLaVA of ``shape`` made directly on ``device`` in ``dtype``; answers never end early."""
    model, processor = random_llava(layers=layers or shape.layers, hidden=shape.hidden, heads=shape.heads,
                                    kv_heads=shape.kv_heads, intermediate=shape.intermediate, vocab=shape.vocab,
                                    vision_hidden=shape.vision_hidden, vision_layers=shape.vision_layers,
                                    image_size=shape.image_size, patch=shape.patch, max_positions=2048,
                                    dtype=dtype, device=device)
    m = vl.wrap(model, processor, name="random-init LLaVA")
    with torch.no_grad():
        for eos in m.adapter.eos_token_ids:
            m.adapter.output_head.weight[eos] = 0
    return m


def environment(device: torch.device) -> dict[str, Any]:
    import transformers

    env: dict[str, Any] = {"torch": torch.__version__, "transformers": transformers.__version__,
                           "vlm_lens": vl.__version__, "vlm_lens_from": str(Path(vl.__file__).parent),
                           "python": platform.python_version(),
                           "platform": platform.platform(), "cpus": os.cpu_count(),
                           "torch_threads": torch.get_num_threads(), "device_name": f"CPU ({os.cpu_count()} cores)"}
    try:
        root = Path(__file__).resolve().parents[1]
        env["commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                       text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                   memory_bytes=props.total_memory, multiprocessors=props.multi_processor_count,
                   cuda=torch.version.cuda)
        try:  # settings that decide the kernels; their names move between torch versions
            env.update(cudnn=torch.backends.cudnn.version(),
                       sdpa={"flash": torch.backends.cuda.flash_sdp_enabled(),
                             "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                             "math": torch.backends.cuda.math_sdp_enabled()},
                       matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
        except Exception as err:  # noqa: BLE001 - recorded, not fatal
            env["settings_error"] = repr(err)
    return env


def to(inputs: Any, device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


# --------------------------------------------------------------------------------------------------- sections
def forward_section(report: Report, m: vl.LensModel, args: argparse.Namespace, deadline: float) -> None:
    device = m.device
    image = noise_image(0)
    text = m.adapter.format_prompt(PROMPT, 1).text
    inputs = to(m.processor(images=image, text=text, return_tensors="pt"), device)
    report.section("forward", positions=int(inputs["input_ids"].shape[1]), rounds=args.rounds,
                   note="trace (defaults) keeps every hidden state on the device and the rows of the last "
                        "position in every layer; ratios are medians over medians of interleaved rounds")

    def eager():
        m.model.set_attn_implementation({"text_config": "eager"})
        try:
            return m.model(**inputs, use_cache=False, logits_to_keep=1, output_attentions=True,
                           output_hidden_states=True)
        finally:
            m.model.set_attn_implementation({"text_config": "sdpa"})

    def with_lens():
        t = vl.trace(m, image, PROMPT)
        t.lens(topk=4)
        return t

    methods = {
        "forward": lambda: m.model(**inputs, use_cache=False, logits_to_keep=1),
        "processor + forward": lambda: m.model(**to(m.processor(images=image, text=text, return_tensors="pt"),
                                                    device), use_cache=False, logits_to_keep=1),
        "trace (defaults)": lambda: vl.trace(m, image, PROMPT),
        "trace (hidden to host)": lambda: vl.trace(m, image, PROMPT, keep=vl.Keep(device="cpu")),
        "trace (last layer, last position)": lambda: vl.trace(m, image, PROMPT, keep=vl.Keep(
            layers=[-1], positions=[-1], attention=False)),
        "trace + lens(topk=4)": with_lens,
        "HF eager + attentions": eager,
    }
    def publish(summaries: dict[str, dict[str, Any]]) -> None:
        base, with_processor = summaries.get("forward"), summaries.get("processor + forward")
        for name, entry in summaries.items():
            if base is not None:
                entry["ratio"] = entry["median_s"] / base["median_s"]
                entry["ratio_cpu"] = entry["median_cpu_s"] / base["median_cpu_s"]
            if with_processor is not None:
                entry["ratio_processor"] = entry["median_s"] / with_processor["median_s"]
            report.record("forward", name, **entry)

    with torch.no_grad():
        interleaved(report, "forward", methods, rounds=args.rounds, device=device, deadline=deadline,
                    warmup=args.warmup, publish=publish)


def quality_section(report: Report, m: vl.LensModel, args: argparse.Namespace, deadline: float) -> None:
    device, tokenizer = m.device, m.adapter.tokenizer
    images = [noise_image(i, (360 + 7 * (i % 9), 270 + 5 * (i % 7))) for i in range(args.samples)]
    dataset = vl.datasets.from_images(images)
    text = m.adapter.format_prompt(QALIGN_PROMPT, 1).text + " " + ANSWER_PREFIX
    level_ids = tokenizer.convert_tokens_to_ids(list(LEVELS))
    generated: list[float] = []
    report.section("quality", samples=args.samples, new_tokens=args.new_tokens, batches=args.batches,
                   rounds=args.quality_rounds,
                   note="plain: processor + generate (greedy, level-word softmax at the first step) per batch; "
                        "vl.run: in memory (no out folder)")

    def plain(batch: int) -> None:
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            inputs = to(m.processor(images=chunk, text=[text] * len(chunk), padding=True, return_tensors="pt"),
                        device)
            out = m.model.generate(**inputs, max_new_tokens=args.new_tokens, do_sample=False,
                                   suppress_tokens=m.adapter.placeholder_ids, pad_token_id=m.adapter.pad_token_id,
                                   output_logits=True, return_dict_in_generate=True)
            torch.softmax(out.logits[0][:, level_ids].float(), -1).cpu()
            generated.append(out.sequences.shape[1] - inputs["input_ids"].shape[1])

    def traced(batch: int, lens: bool) -> None:
        vl.run(m, dataset, [vl.analyses.Quality(generate=args.new_tokens, lens=lens)], batch_size=batch,
               progress=False)

    methods: dict[str, Callable[[], Any]] = {}
    baseline: dict[str, str] = {}  # method -> the plain method of its batch size
    for batch in args.batches:
        base = f"batch {batch}: plain generate"
        methods[base] = lambda b=batch: plain(b)
        methods[f"vl.run Quality, batch {batch}"] = lambda b=batch: traced(b, True)
        methods[f"vl.run Quality, batch {batch}, lens off"] = lambda b=batch: traced(b, False)
        baseline.update({name: base for name in list(methods)[-3:]})
    def publish(summaries: dict[str, dict[str, Any]]) -> None:
        report.section("quality", mean_new_tokens_plain=float(np.mean(generated)) if generated else None)
        for name, entry in summaries.items():
            entry["samples_per_s"] = args.samples / entry["median_s"]
            base = summaries.get(baseline[name])
            if base is not None:
                entry["ratio"] = base["median_s"] / entry["median_s"]
                entry["ratio_cpu"] = base["median_cpu_s"] / entry["median_cpu_s"]
            report.record("quality", name, **entry)

    with torch.no_grad():
        interleaved(report, "quality", methods, rounds=args.quality_rounds, device=device, deadline=deadline,
                    warmup=min(args.warmup, 1), publish=publish)


# ------------------------------------------------------------------------------------------------------- main
def guarded(report: Report, section: str, fn: Callable[[], Any], name: str = "(section)") -> float:
    """Run a section's code; an error that escapes its own measurements is recorded as ``name``, and the script
    goes on. Returns the seconds it took."""
    start = time.perf_counter()
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - recorded; the next section runs
        report.fail(section, name, err)
    return round(time.perf_counter() - start, 2)


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for gpu.json and gpu.txt (created)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (default shape small, float32)")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="default: 7b on a GPU, small with --cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                        help="of the timed model (default: bfloat16 on a GPU, float32 with --cpu)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds of the forward section")
    parser.add_argument("--quality-rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each method first")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32], help="batch sizes of the quality runs")
    parser.add_argument("--samples", type=int, default=64, help="samples of each quality run")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens generated per answer in the quality runs")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--budget-s", type=float, default=270.0,
                        help="no new section or round starts after this many seconds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.cpu:
        args.shape, args.dtype = args.shape or "small", args.dtype or "float32"
    else:
        args.shape, args.dtype = args.shape or "7b", args.dtype or "bfloat16"
    return args


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: pass --cpu for the CPU mode", file=sys.stderr)
        return 2
    from transformers.utils import logging

    logging.set_verbosity_error()  # sdpa's output_attentions warning of the vision tower, in the eager baseline
    device = torch.device("cpu" if args.cpu else "cuda")
    dtype, shape = getattr(torch, args.dtype), SHAPES[args.shape]
    start = time.perf_counter()
    deadline = start + args.budget_s
    report = Report(args.out, {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    environment(device), {"name": args.shape, "description": shape.describe(args.shape),
                                          **asdict(shape)})
    images = [noise_image(i, size) for i, size in enumerate([(400, 300), (320, 480), (500, 500)])]
    if "exactness" in args.only:
        report.section("exactness", seconds=guarded(report, "exactness", lambda: run_exactness(
            report, lambda d: build(shape, device, d, layers=shape.exact_layers), images, PROMPT, PROMPTS)))
        free_memory()
    model: list[vl.LensModel] = []
    for name, section in (("forward", forward_section), ("quality", quality_section)):
        if name not in args.only:
            continue
        if time.perf_counter() > deadline:
            report.skip(name, "(section)", f"time budget of {args.budget_s:.0f} s spent")
            continue
        if not model:
            seconds = guarded(report, name, lambda: model.append(build(shape, device, dtype)), "(building the model)")
            if not model:
                continue
            report.section(name, build_seconds=seconds, parameters=sum(p.numel() for p in model[0].model.parameters()))
        report.section(name, seconds=guarded(report, name, lambda run=section: run(report, model[0], args, deadline)))
    report.finish()
    print(report.out.joinpath("gpu.txt").read_text())
    failed = report.data["failures"] or any(
        e.get("passed") is False for e in report.data["sections"].get("exactness", {}).get("measurements", {}).values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
