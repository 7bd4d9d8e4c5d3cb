"""Stages 2-3 of the recipe: train projector + decoder on cached vision features.

The vision tower is frozen after its pretraining (:mod:`.vision`), so its patch features are computed once per
image and cached; every decoder step then costs only the decoder. :func:`forward` splices the projected features
into the token embeddings exactly where ``LlavaForConditionalGeneration`` puts them (the tests check the logits
agree), so what is trained here is what ``vl.load`` later runs.

Three kinds of training sequences, all ``prompt + response`` with the LLaVA-1.5 chat template, right padded (with
causal attention, real positions never see the padding, so no mask is needed); the loss covers the response part
named in the kind:

=============  ==============================  =================================================  ===============
kind           image tokens                    tokens after ``ASSISTANT:``                        loss on
=============  ==============================  =================================================  ===============
``answer``     the sample's own image          description + quality sentence + ``</s>``          all of them
``describe``   the sample's own image          description                                        the description
``rate``       **another sample's image**      description + quality sentence + ``</s>``          quality + ``</s>``
=============  ==============================  =================================================  ===============

The one-stage model trains on ``answer`` only. The two-stage model trains on ``describe`` (stage 1), then on
``rate`` mixed with ``describe`` replay (stage 2). In ``rate`` the image tokens belong to a different, random
sample: they are as real as at inference, but statistically independent of the level word, so no gradient ever
rewards reading the level from the image, directly or through the description positions' hidden states. The only
input that predicts the level is the description text. (Why not drop the image or mask it: docs/zoo.md.)

Example:
    >>> seqs = Sequences.build(processor)                   # doctest: +SKIP
    >>> ids, labels, rows = seqs.batch(frame, [0, 1], "answer", rng)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..core.errors import VlmLensError
from .grammar import PROMPTS, QUALITY_SENTENCE
from .schedule import cosine_lr

__all__ = ["KINDS", "Sequences", "forward", "train_decoder"]

KINDS = ("answer", "describe", "rate")


@dataclass
class Sequences:
    """Token ids of the prompts and of every sample's description and quality sentence.

    Attributes:
        prompts: Token ids of each prompt of :data:`.grammar.PROMPTS`, rendered with the chat template and the
            image placeholder expanded (``<s> user : <image> x 64 ... assistant :``).
        descriptions: Per sample, the description's ids.
        qualities: Per sample, the quality sentence's ids.
        eos, pad, image_token: Special ids.
    """

    prompts: list[list[int]]
    descriptions: list[list[int]]
    qualities: list[list[int]]
    eos: int
    pad: int
    image_token: int

    @classmethod
    def build(cls, processor, labels: pd.DataFrame, prompts: Sequence[str] = PROMPTS) -> "Sequences":
        from PIL import Image

        tok = processor.tokenizer
        size = processor.image_processor.crop_size["height"]
        blank = Image.new("RGB", (size, size))
        rendered = [processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
            add_generation_prompt=True, tokenize=False) for p in prompts]
        prompt_ids = [processor(images=[blank], text=[r], return_tensors="pt")["input_ids"][0].tolist()
                      for r in rendered]
        unk = tok.unk_token_id
        for p, ids in zip(prompts, prompt_ids):
            if unk in ids:
                raise VlmLensError(f"prompt {p!r} has words outside the zoo vocabulary; add them to grammar.py.")
        descriptions = tok(list(labels["description"]), add_special_tokens=False)["input_ids"]
        qualities = tok([QUALITY_SENTENCE.format(level=lv) for lv in labels["level"]],
                        add_special_tokens=False)["input_ids"]
        return cls(prompt_ids, descriptions, qualities, tok.eos_token_id, tok.pad_token_id,
                   tok.convert_tokens_to_ids("<image>"))

    def batch(self, rows: Sequence[int], kind: str, rng: np.random.Generator,
              prompt: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(input_ids [B, T], labels [B, T], image_rows [B])`` for samples ``rows`` (right padded).

        ``image_rows[b]`` is the sample whose cached image features fill row ``b``'s image tokens: the row's own
        sample, except for ``rate``, where it is a random other sample. ``prompt`` fixes the prompt variant
        (default: a random one per row).
        """
        if kind not in KINDS:
            raise VlmLensError(f"kind={kind!r}: expected one of {KINDS}.")
        n = len(self.descriptions)
        seqs, targets, images = [], [], []
        for row in rows:
            p = self.prompts[prompt if prompt is not None else int(rng.integers(len(self.prompts)))]
            desc, quality = self.descriptions[row], self.qualities[row]
            if kind == "describe":
                response, loss = desc, [True] * len(desc)
            elif kind == "answer":
                response = desc + quality + [self.eos]
                loss = [True] * len(response)
            else:
                response = desc + quality + [self.eos]
                loss = [False] * len(desc) + [True] * (len(quality) + 1)
            image = row
            if kind == "rate":
                image = (row + 1 + int(rng.integers(n - 1))) % n  # any sample but this one
            seqs.append(p + response)
            targets.append([-100] * len(p) + [t if keep else -100 for t, keep in zip(response, loss)])
            images.append(image)
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
        labels = torch.full((len(seqs), width), -100, dtype=torch.long)
        for b, (s, t) in enumerate(zip(seqs, targets)):
            input_ids[b, :len(s)] = torch.tensor(s)
            labels[b, :len(t)] = torch.tensor(t)
        return input_ids, labels, torch.tensor(images, dtype=torch.long)


def forward(model, input_ids: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, T, vocab]`` of the LLaVA ``model`` for ``input_ids`` whose image tokens take
    ``image_features`` (``[B, patches, vision_width]``, the tower's selected features, before the projector)."""
    inner = model.model
    embeds = inner.get_input_embeddings()(input_ids)
    projected = inner.multi_modal_projector(image_features.to(embeds.dtype))
    mask = (input_ids == model.config.image_token_id)[..., None].expand_as(embeds)
    embeds = embeds.masked_scatter(mask, projected.reshape(-1, projected.shape[-1]))
    hidden = inner.language_model(inputs_embeds=embeds).last_hidden_state
    return model.lm_head(hidden)


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


def decoder_parameters(model) -> list[torch.nn.Parameter]:
    """What the decoder stages train: projector, language model, output head (the vision tower stays frozen)."""
    return [*model.model.multi_modal_projector.parameters(), *model.model.language_model.parameters(),
            *model.lm_head.parameters()]


def train_decoder(model, features: torch.Tensor, sequences: Sequences, *, mix: dict[str, float], steps: int,
                  batch: int = 32, lr: float = 1e-3, seed: int = 0, name: str = "decoder",
                  log: Callable[[str], None] = print) -> dict:
    """Train projector + decoder for ``steps`` steps on batches mixing sequence kinds.

    Args:
        model: The zoo LLaVA (its vision tower is not used: ``features`` replace it).
        features: ``[n, patches, vision_width]`` cached vision features of the training images.
        sequences: Token ids of the same ``n`` samples.
        mix: Kind -> fraction of each batch (e.g. ``{"rate": 0.5, "describe": 0.5}``).
        steps, batch, lr, seed: Optimisation (AdamW, warm-up then cosine decay) and its seed.
        name: Stage name in the log lines.

    Returns:
        Measurements: ``seconds``, ``steps``, ``batch``, ``loss_first`` / ``loss_last`` (mean of the first / last
        20 steps) and per kind ``loss_last_<kind>``.
    """
    unknown = set(mix) - set(KINDS)
    if unknown or not mix or abs(sum(mix.values()) - 1) > 1e-6:
        raise VlmLensError(f"mix={mix}: expected fractions of kinds in {KINDS} summing to 1.")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = decoder_parameters(model)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    counts = {kind: int(round(frac * batch)) for kind, frac in mix.items()}
    model.train()
    history: dict[str, list[float]] = {"total": [], **{k: [] for k in mix}}
    start = time.perf_counter()
    n = len(features)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        total = 0.0
        optimizer.zero_grad(set_to_none=True)
        for kind, count in counts.items():
            if not count:
                continue
            ids, labels, rows = sequences.batch(rng.integers(0, n, count).tolist(), kind, rng)
            loss = _loss(forward(model, ids, features[rows].float()), labels)
            (loss * count / batch).backward()
            history[kind].append(loss.item())
            total += loss.item() * count / batch
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        history["total"].append(total)
        if (step + 1) % max(1, steps // 10) == 0:
            parts = " ".join(f"{k} {np.mean(v[-20:]):.4f}" for k, v in history.items() if k != "total")
            log(f"{name} step {step + 1}/{steps} loss {np.mean(history['total'][-20:]):.4f} ({parts}) "
                f"({time.perf_counter() - start:.0f} s)")
    model.eval()
    result = {"seconds": time.perf_counter() - start, "steps": steps, "batch": batch, "mix": dict(mix),
              "loss_first": float(np.mean(history["total"][:20])), "loss_last": float(np.mean(history["total"][-20:]))}
    result.update({f"loss_last_{k}": float(np.mean(v[-20:])) for k, v in history.items() if k != "total" and v})
    return result


@torch.no_grad()
def cache_features(model, images: np.ndarray, batch: int = 256, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """``[n, H, W, 3]`` uint8 -> ``[n, patches, vision_width]`` features of the frozen tower (float16 by default:
    half the memory; the decoder sees them rounded, a difference far below what training notices)."""
    from .model import pixel_values
    from .vision import patch_features

    model.eval()
    out = [patch_features(model, pixel_values(images[s:s + batch])).to(dtype) for s in range(0, len(images), batch)]
    return torch.cat(out)
