"""mPLUG-Owl2's vision tower: a CLIP-style ViT with its own weight layout.

Module tree (names are the official checkpoint keys under ``model.vision_model``)::

    VisionModel
    ├── embeddings            VisionEmbeddings
    │   ├── patch_embed       Conv2d(3 -> hidden, kernel = stride = patch), no bias
    │   ├── cls_token         (1, 1, hidden)
    │   ├── position_embedding (1, 1 + patches, hidden)
    │   └── pre_layernorm     LayerNorm
    ├── encoder.layers[j]     VisionLayer (pre-LN)
    │   ├── input_layernorm, post_attention_layernorm   LayerNorm
    │   ├── self_attn         VisionAttention: query_key_value (fused), dense
    │   └── mlp               fc1 -> QuickGELU -> fc2
    └── post_layernorm        LayerNorm, applied to every token (cls included, unlike HF CLIP)

Two details differ from HF's CLIP and are easy to get wrong: the fused ``query_key_value`` output is laid out
``(heads, 3, head_dim)`` — q, k and v interleaved per head, not stacked — and the original computes the attention
softmax in the input dtype. ``attn_implementation="eager"`` reproduces that exactly; ``"sdpa"`` (what the model
uses unless the decoder runs eager attention) computes the same attention with PyTorch's fused kernel.

Example:
    >>> import torch
    >>> vit = VisionModel(VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    ...                                num_attention_heads=4, image_size=28, patch_size=14))
    >>> vit(torch.zeros(2, 3, 28, 28)).last_hidden_state.shape
    torch.Size([2, 5, 32])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput

from .configuration import VisionConfig

__all__ = ["VisionModel"]


class VisionEmbeddings(nn.Module):
    """Patches + cls token + learned positions, then ``pre_layernorm``: ``[b, 3, S, S] -> [b, 1 + patches, d]``."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.patch_embed = nn.Conv2d(config.num_channels, d, kernel_size=config.patch_size,
                                     stride=config.patch_size, bias=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.position_embedding = nn.Parameter(torch.zeros(1, config.num_positions, d))
        self.pre_layernorm = nn.LayerNorm(d, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(patches.shape[0], -1, -1).to(patches.dtype)
        tokens = torch.cat([cls, patches], dim=1)
        tokens = tokens + self.position_embedding[:, :tokens.shape[1]].to(patches.dtype)
        return self.pre_layernorm(tokens)


class VisionAttention(nn.Module):
    """Self-attention with one fused projection whose output is ``(heads, 3, head_dim)`` per token."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim ** -0.5
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, attn_implementation: str = "eager") -> torch.Tensor:
        batch, length, width = hidden_states.shape
        fused = self.query_key_value(hidden_states).view(batch, length, self.num_heads, 3, self.head_dim)
        query, key, value = fused.permute(3, 0, 2, 1, 4).unbind(0)  # each [b, head, pos, head_dim]
        if attn_implementation == "eager":
            probs = torch.softmax(torch.matmul(query, key.transpose(-1, -2)) * self.scale, dim=-1)
            context = torch.matmul(probs, value)
        else:
            context = F.scaled_dot_product_attention(query, key, value, scale=self.scale)
        return self.dense(context.transpose(1, 2).reshape(batch, length, width))


class VisionMLP(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class VisionLayer(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = VisionAttention(config)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = VisionMLP(config)

    def forward(self, hidden_states: torch.Tensor, attn_implementation: str = "eager") -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), attn_implementation)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class VisionEncoder(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states: torch.Tensor, attn_implementation: str = "eager") -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states, attn_implementation)
        return hidden_states


class VisionModel(nn.Module):
    """The ViT: ``pixel_values [b, 3, S, S] -> last_hidden_state [b, 1 + patches, d]`` (post-LN on every row).

    Args:
        config: The parsed ``visual_config["visual_model"]``.
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = VisionEmbeddings(config)
        self.encoder = VisionEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor, attn_implementation: str = "eager") -> BaseModelOutput:
        """Encode images; ``attn_implementation`` is ``"eager"`` (the original's arithmetic) or ``"sdpa"``."""
        hidden_states = self.encoder(self.embeddings(pixel_values), attn_implementation)
        return BaseModelOutput(last_hidden_state=self.post_layernorm(hidden_states))
