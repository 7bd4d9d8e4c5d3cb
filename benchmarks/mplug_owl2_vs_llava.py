"""Does the mPLUG-Owl2 port cost more than LLaVA with the same decoder? (run by hand; prints ratios)

mPLUG-Owl2's decoder is LLaMA's plus per-modality key/value projections and norms: each multiway module gathers
the text rows and the visual rows, runs its two copies, and scatters the results back. The port must not be slower
than a LLaVA of the same decoder size by more than what those projections could cost at most — computing both
copies of k_proj and v_proj on every token, i.e. ``1 + 2 d d_kv / (d (2 d + 2 d_kv) + 3 d d_ff)`` for the decoder
(1.17 at 7B shape) — and should in practice be close to 1.

One process, random init, a 7B-shaped decoder scaled for a CPU (head_dim 128, d_ff / d = 11008 / 4096, no GQA;
by default d = 1024, 8 heads, 4 layers), interleaved rounds, medians of each model's time, ratio = port / LLaVA:

- ``decoder``: the decoder stacks alone (rotary, mask, layers, final norm) on the same ``inputs_embeds`` of
  ``--length`` positions, 65 of them visual for the port, so every multiway module takes its gather/scatter path.
  This is the number the issue asks about.
- ``decode``: ``--steps`` cached decoding steps of one token after that prefill (all text: no routing at all).
- ``trace``: ``vl.trace`` of one image + question on each model with its own vision side (LLaVA: CLIP at 336 px,
  576 image tokens; the port: ViT at 448 px -> abstractor -> 65 tokens), every hidden state and attention rows of
  the last position. Informational: the two vision sides and sequence lengths differ by design.

    python benchmarks/mplug_owl2_vs_llava.py [--rounds 7] [--hidden 1024] [--layers 4] [--length 256] [--threads 1]
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
from vlm_lens.models.mplug_owl2 import (
    MPLUGOwl2Config,
    MPLUGOwl2ForCausalLM,
    MPLUGOwl2Processor,
)


def build_llava(folder: str, hidden: int, layers: int, vision_hidden: int) -> vl.LensModel:
    from vlm_lens.testing import tiny_llava

    path = tiny_llava(folder, layers=layers, hidden=hidden, heads=hidden // 128, kv_heads=hidden // 128,
                      intermediate=hidden * 11008 // 4096, vision_hidden=vision_hidden, vision_layers=2,
                      image_size=336, patch=14, max_positions=2048)
    return vl.load(path)


def build_owl(llava: vl.LensModel, vision_hidden: int) -> vl.LensModel:
    """The port with LLaVA's decoder shape and vocabulary, a 448 px ViT and a 64-query abstractor."""
    from transformers import CLIPImageProcessorPil

    text = llava.model.config.text_config
    heads = max(1, vision_hidden // 64)
    config = MPLUGOwl2Config(
        vocab_size=text.vocab_size, hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers, num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads, max_position_embeddings=2048, rms_norm_eps=1e-6,
        visual_config={"visual_model": {"hidden_size": vision_hidden, "intermediate_size": 4 * vision_hidden,
                                        "num_hidden_layers": 2, "num_attention_heads": heads,
                                        "image_size": 448, "patch_size": 14},
                       "visual_abstractor": {"hidden_size": vision_hidden, "encoder_hidden_size": vision_hidden,
                                             "intermediate_size": 11 * vision_hidden // 4, "num_hidden_layers": 2,
                                             "num_attention_heads": heads, "num_learnable_queries": 64,
                                             "grid_size": 32}})
    config._attn_implementation_internal = "sdpa"
    torch.manual_seed(0)
    model = MPLUGOwl2ForCausalLM(config).eval()
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    images = CLIPImageProcessorPil(size={"shortest_edge": 448}, crop_size={"height": 448, "width": 448},
                                   image_mean=mean, image_std=std)
    return vl.wrap(model, MPLUGOwl2Processor(images, llava.processor.tokenizer))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--hidden", type=int, default=1024, help="decoder width (a multiple of 128)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--length", type=int, default=256, help="positions of the decoder-only comparison")
    parser.add_argument("--steps", type=int, default=16, help="cached decoding steps")
    parser.add_argument("--vision-hidden", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine, threads waiting for each other swamp "
                             "the difference being measured; 0 leaves torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        llava = build_llava(folder, args.hidden, args.layers, args.vision_hidden)
    owl = build_owl(llava, args.vision_hidden)
    decoder_llava, decoder_owl = llava.model.model.language_model, owl.model.model
    text = llava.model.config.text_config

    generator = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, args.length, args.hidden, generator=generator)
    visual = torch.zeros(1, args.length, dtype=torch.long)
    visual[0, 5:5 + 65] = 1  # one image after a short system prompt, as in the real prompts
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    question = "How would you rate the quality of this image?"

    @torch.no_grad()
    def decode(decoder, **extra):
        cache = decoder(inputs_embeds=embeds, use_cache=True, **extra).cache
        step = embeds[:, -1:]
        for _ in range(args.steps):
            cache = decoder(inputs_embeds=step, cache=cache, use_cache=True).cache

    stages = {
        "decoder": (lambda: decoder_llava(inputs_embeds=embeds),
                    lambda: decoder_owl(inputs_embeds=embeds, modality_indicators=visual)),
        "decode": (lambda: decode(decoder_llava), lambda: decode(decoder_owl, modality_indicators=visual)),
        "trace": (lambda: vl.trace(llava, image, question, keep=vl.Keep(query_positions=[-1])),
                  lambda: vl.trace(owl, image, question, keep=vl.Keep(query_positions=[-1]))),
    }
    times = {name: ([], []) for name in stages}
    with torch.no_grad():
        for fn_llava, fn_owl in stages.values():  # warm-up
            fn_llava(), fn_owl()
        for _ in range(args.rounds):
            for name, (fn_llava, fn_owl) in stages.items():
                times[name][0].append(timed(fn_llava))
                times[name][1].append(timed(fn_owl))

    d, d_kv, d_ff = text.hidden_size, text.num_key_value_heads * 128, text.intermediate_size
    bound = 1 + 2 * d * d_kv / (d * (2 * d + 2 * d_kv) + 3 * d * d_ff)
    print(f"decoder: d={d}, heads={text.num_attention_heads}x128, d_ff={d_ff}, layers={text.num_hidden_layers}, "
          f"vocab={text.vocab_size}; {args.length} positions (65 visual for the port); "
          f"torch threads {torch.get_num_threads()}; {args.rounds} interleaved rounds, medians")
    print(f"{'stage':<9}{'LLaVA ms':>10}{'port ms':>10}{'ratio':>8}")
    for name, (a, b) in times.items():
        ma, mb = statistics.median(a) * 1e3, statistics.median(b) * 1e3
        print(f"{name:<9}{ma:>10.1f}{mb:>10.1f}{mb / ma:>8.3f}")
    print(f"bound for the decoder (k/v projections computed twice on every token): {bound:.3f}")


if __name__ == "__main__":
    main()
