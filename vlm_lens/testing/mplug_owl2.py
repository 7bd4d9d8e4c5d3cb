"""A tiny random-init mPLUG-Owl2 checkpoint, written in the official layout (for docs, demos and tests).

Real Q-Align / Q-Instruct weights (16 GB) cannot be assumed at hand. :func:`tiny_mplug_owl2` writes what an official
checkpoint folder holds — ``config.json`` in the original format (LLaMA fields + ``visual_config``), the weights under
the official key names, ``preprocessor_config.json`` and ``generation_config.json`` — plus vlm_lens's word-level test
tokenizer (``tokenizer.json``; the real checkpoints ship LLaMA's ``tokenizer.model``). The folder loads with
``vl.load(path)`` through the same code path as a real checkpoint.

Example:
    >>> import tempfile, vlm_lens as vl
    >>> m = vl.load(tiny_mplug_owl2(tempfile.mkdtemp()))
    >>> m.family, m.adapter.tokens_per_image
    ('mplug_owl2', 9)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..models.mplug_owl2.configuration import MPLUGOwl2Config
from ..zoo.tokenizer import word_tokenizer

__all__ = ["tiny_mplug_owl2"]

_MEAN, _STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def tiny_mplug_owl2(path: str | Path, *, layers: int = 2, hidden: int = 64, heads: int = 4,
                    vision_hidden: int = 32, image_size: int = 56, patch: int = 14, queries: int = 8,
                    seed: int = 0) -> Path:
    """Write a random-init mPLUG-Owl2 checkpoint to ``path`` (created) and return the folder.

    Args:
        path: Folder to write.
        layers, hidden, heads: Decoder shape (LLaMA, multi-head).
        vision_hidden, image_size, patch: ViT shape (also the abstractor's width); the patch grid is
            ``image_size // patch``.
        queries: Abstractor queries (each image becomes ``queries + 1`` decoder positions).
        seed: Seed of the random initialisation.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = word_tokenizer()
    heads_v = max(1, vision_hidden // 8)
    visual = {
        "visual_model": {"model_type": "mplug_owl_vision_model", "hidden_size": vision_hidden,
                         "intermediate_size": 4 * vision_hidden, "num_hidden_layers": 2,
                         "num_attention_heads": heads_v, "image_size": image_size, "patch_size": patch,
                         "hidden_act": "quick_gelu", "layer_norm_eps": 1e-6},
        "visual_abstractor": {"model_type": "mplug_owl_visual_abstract", "hidden_size": vision_hidden,
                              "encoder_hidden_size": vision_hidden, "intermediate_size": 11 * vision_hidden // 4,
                              "num_hidden_layers": 2, "num_attention_heads": heads_v,
                              "num_learnable_queries": queries, "grid_size": image_size // patch,
                              "layer_norm_eps": 1e-6}}
    config = {"architectures": ["MPLUGOwl2LlamaForCausalLM"], "model_type": "mplug_owl2", "bos_token_id": 1,
              "eos_token_id": 2, "pad_token_id": 3, "hidden_act": "silu", "hidden_size": hidden,
              "intermediate_size": hidden * 11008 // 4096, "max_position_embeddings": 512,
              "num_attention_heads": heads, "num_hidden_layers": layers, "num_key_value_heads": heads,
              "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 10000.0, "tie_word_embeddings": False,
              "torch_dtype": "float32", "vocab_size": len(tokenizer), "visual_config": visual}
    from ..models.mplug_owl2.modeling import MPLUGOwl2ForCausalLM

    parsed = MPLUGOwl2Config(**{k: v for k, v in config.items() if k != "rope_scaling"})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MPLUGOwl2ForCausalLM(parsed)
        _spread(model)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2,
                                                               "pad_token_id": 3}))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": image_size},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": _MEAN,
        "image_std": _STD, "do_convert_rgb": True}, indent=2))
    tokenizer.save_pretrained(folder)
    return folder


@torch.no_grad()
def _spread(model: torch.nn.Module) -> None:
    """Weights with unit-scale activations (HF's std 0.02 makes every attention row uniform and every lens flat)."""
    for name, param in model.named_parameters():
        if param.ndim >= 2 and "embed" not in name and "position" not in name:
            param.normal_(0.0, param.shape[-1] ** -0.5 if param.ndim == 2 else param[0].numel() ** -0.5)
        elif ("norm" in name or "ln" in name) and name.endswith("weight"):
            param.uniform_(0.8, 1.2)
        elif "norm" in name or "ln" in name:
            param.zero_()
        else:
            param.normal_(0.0, 1.0 if param.ndim >= 2 else 0.05)
