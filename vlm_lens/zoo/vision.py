"""Stage 1 of the recipe: pretrain the CLIP vision tower to see degradations.

Real VLMs never learn to see from their captions alone: LLaVA starts from CLIP, trained on 400 M image-text pairs.
The zoo's analogue of that pretraining is dense, cheap supervision the generator gives for free: for each of the
seven degradation types, whether it is present and how severe it is. A small head reads the mean of the patch
embeddings LLaVA hands to the decoder (``hidden_states[vision_feature_layer]`` without CLS), so that what the head
needs must be in exactly the features the projector will see. The head is thrown away afterwards; the tower is
frozen for the rest of the recipe, as LLaVA freezes CLIP.

The patch embedding starts from a whitened DCT basis (:func:`init_dct`). Measured (docs/zoo.md): from the default
random initialisation, 600 steps detect exposure, contrast and saturation but never predict blur, noise or JPEG
(recall 0); from the DCT basis, 300 steps already find all three.

Example:
    >>> from vlm_lens.zoo.model import build
    >>> model, _ = build()
    >>> head = SeverityHead(model.config.vision_config.hidden_size)
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..runs.stats import srcc
from .model import pixel_values
from .schedule import cosine_lr
from .synthetic import TYPES, mos

__all__ = ["SeverityHead", "init_dct", "patch_features", "pretrain_vision", "severity_loss", "severity_metrics"]


class SeverityHead(nn.Module):
    """Patch features, pooled by the caller -> per type: presence logit and severity (sigmoid)."""

    def __init__(self, width: int, n_types: int = len(TYPES)) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.hidden = nn.Linear(width, width)
        self.out = nn.Linear(width, 2 * n_types)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[..., width]`` -> presence logits and severities, ``[..., types]`` each."""
        x = self.out(torch.nn.functional.gelu(self.hidden(self.norm(features))))
        presence, severity = x.chunk(2, dim=-1)
        return presence, torch.sigmoid(severity)


def patch_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """``[n, 3, H, W]`` -> ``[n, patches, width]``: the vision features LLaVA projects (CLS dropped)."""
    layer = model.config.vision_feature_layer
    out = model.model.vision_tower(pixel_values=pixels, output_hidden_states=True)
    return out.hidden_states[layer][:, 1:]


def _targets(labels: pd.DataFrame) -> torch.Tensor:
    return torch.tensor(labels[list(TYPES)].to_numpy(), dtype=torch.float32)


def _augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips and 90-degree turns (they keep JPEG's 8x8 grid where it was)."""
    k = int(rng.integers(4))
    out = np.rot90(images, k, axes=(1, 2))
    if rng.random() < 0.5:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


def pretrain_vision(model, images: np.ndarray, labels: pd.DataFrame, *, steps: int, batch: int = 64,
                    lr: float = 2e-3, seed: int = 0, val: tuple[np.ndarray, pd.DataFrame] | None = None,
                    log: Callable[[str], None] = print) -> dict:
    """Train ``model.model.vision_tower`` (+ a throw-away head) on presence and severity of each degradation.

    Args:
        model: The zoo LLaVA (only its vision tower is trained).
        images, labels: Training images ``[n, H, W, 3]`` uint8 and their :func:`~vlm_lens.zoo.synthetic` labels.
        steps, batch, lr: Optimisation (AdamW, warm-up then cosine decay).
        seed: Seed of the batch order, the augmentation and the head's initialisation.
        val: Optional held-out set measured at the end (:func:`severity_metrics`).
        log: Where progress lines go.

    Returns:
        Measurements: ``seconds``, ``loss_first``/``loss_last`` (mean of the first/last 20 steps), and the
        validation metrics when ``val`` is given.
    """
    tower = model.model.vision_tower
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    head = SeverityHead(tower.config.hidden_size)
    params = list(tower.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    targets = _targets(labels)
    tower.train()
    losses, start = [], time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        idx = rng.integers(0, len(images), batch)
        pixels = pixel_values(_augment(images[idx], rng))
        presence, severity = head(patch_features(model, pixels).mean(1))
        loss = severity_loss(presence, severity, targets[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 10) == 0:
            log(f"vision step {step + 1}/{steps} loss {np.mean(losses[-20:]):.4f} "
                f"({time.perf_counter() - start:.0f} s)")
    tower.eval()
    result = {"seconds": time.perf_counter() - start, "steps": steps, "batch": batch,
              "loss_first": float(np.mean(losses[:20])), "loss_last": float(np.mean(losses[-20:]))}
    if val is not None:
        result["val"] = severity_metrics(model, head, *val)
    for p in tower.parameters():
        p.requires_grad_(False)
    return result


def severity_loss(presence: torch.Tensor, severity: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE on presence + 4 x MSE on the severity of the degradations that are present."""
    present = (target > 0).float()
    bce = nn.functional.binary_cross_entropy_with_logits(presence, present)
    mse = ((severity - target) ** 2 * present).sum() / present.sum().clamp(min=1)
    return bce + 4.0 * mse


@torch.no_grad()
def severity_metrics(model, head: SeverityHead, images: np.ndarray, labels: pd.DataFrame,
                     batch: int = 256) -> dict:
    """Per-type presence accuracy / precision / recall and severity-word accuracy, plus the SRCC of the MOS
    computed from the predicted severities (how much quality information the features hold)."""
    pres, sev = [], []
    for start in range(0, len(images), batch):
        p, s = head(patch_features(model, pixel_values(images[start:start + batch])).mean(1))
        pres.append(torch.sigmoid(p))
        sev.append(s)
    pres, sev = torch.cat(pres).numpy(), torch.cat(sev).numpy()
    truth = labels[list(TYPES)].to_numpy()
    out = {}
    for j, name in enumerate(TYPES):
        t, p = truth[:, j] > 0, pres[:, j] > 0.5
        word_t = np.ceil(truth[:, j] * 3 - 1e-9)
        word_p = np.clip(np.ceil(sev[:, j] * 3 - 1e-9), 1, 3)
        both = t & p
        out[name] = {"accuracy": float((t == p).mean()),
                     "precision": float(both.sum() / max(p.sum(), 1)), "recall": float(both.sum() / max(t.sum(), 1)),
                     "severity_word_accuracy": float((word_t[both] == word_p[both]).mean()) if both.any() else None}
    predicted = np.where(pres > 0.5, sev, 0.0)
    scores = np.array([mos(dict(zip(TYPES, row))) for row in predicted])
    out["mos_srcc"] = srcc(scores, labels["mos"].to_numpy())
    return out


@torch.no_grad()
def init_dct(tower, images: np.ndarray) -> None:
    """Start the patch embedding from a whitened 2-D DCT basis: luma frequencies first, then chroma, low
    frequencies first, each filter scaled so that its response has unit variance over ``images``.

    The analogue of the Gabor-like first layer of a pretrained CLIP. Without it, a tower trained from scratch for
    minutes never learns blur, noise or JPEG (their signal is a small high-frequency residue that random filters
    drown in the image content; measured in docs/zoo.md); with it, high-frequency energy is in plain view.
    """
    conv = tower.embeddings.patch_embedding
    width, _, p, _ = conv.weight.shape
    k = torch.arange(p, dtype=torch.float32)
    basis_1d = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * p)) * math.sqrt(2 / p)
    basis_1d[0] /= math.sqrt(2)
    freqs = sorted(((u, v) for u in range(p) for v in range(p)), key=lambda uv: (uv[0] + uv[1], uv))
    colours = torch.tensor([[0.299, 0.587, 0.114], [-0.169, -0.331, 0.5], [0.5, -0.419, -0.081]])
    filters = []
    n_luma = min(len(freqs), width // 2)
    n_chroma = (width - n_luma) // 2
    for c, count in ((0, n_luma), (1, n_chroma), (2, width - n_luma - n_chroma)):
        for u, v in freqs[:count]:
            pattern = basis_1d[u][:, None] * basis_1d[v][None, :]
            filters.append(colours[c][:, None, None] * pattern[None])
    weight = torch.stack(filters)
    sample = pixel_values(images[:512])
    response = torch.nn.functional.conv2d(sample, weight, stride=p)
    scale = response.transpose(0, 1).reshape(width, -1).std(1).clamp(min=1e-3)
    conv.weight.copy_(weight / scale[:, None, None, None])
    if conv.bias is not None:
        conv.bias.zero_()
