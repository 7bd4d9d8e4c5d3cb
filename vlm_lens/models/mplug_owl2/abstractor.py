"""mPLUG-Owl2's visual abstractor: 64 learned queries read the ViT's 1025 tokens and become 65 decoder inputs.

Module tree (official keys under ``model.visual_abstractor``)::

    VisualAbstractor
    ├── query_embeds                 (1, queries, d) learned queries
    ├── encoder.layers[k]            AbstractorLayer
    │   └── crossattention
    │       ├── norm1, normk         LayerNorm (eps 1e-5) on the queries / on the image features
    │       ├── attention            query, key, value (Linear); buffers q_pos_embed, k_pos_embed (2-D sin-cos)
    │       └── output
    │           ├── out_proj         Linear
    │           ├── norm2            LayerNorm (eps 1e-5)
    │           └── mlp              w1, w3 (SwiGLU) -> ffn_ln (LayerNorm over the intermediate size) -> w2
    ├── visual_fc                    Linear(d -> decoder width)
    └── vit_eos                      (1, 1, decoder width): appended after the queries of every image

One layer, with ``q = norm1(queries)`` and ``kv = [q ; normk(image)]`` (keys and values also see the queries)::

    query = Wq(q + q_pos)   key = Wk(kv + [q_pos ; k_pos])   value = Wv(kv)       # no positions on values
    x = q + out_proj(softmax(query key^T / sqrt(head_dim)) value)                   # residual from the NORMED q
    x = x + w2(ffn_ln(silu(w1(norm2(x))) * w3(norm2(x))))

The position buffers are persistent in the official checkpoints and are loaded from them (the original computed
them in numpy float32; recomputing in torch differs by ~3e-7). :func:`sincos_positions` rebuilds them for a
randomly initialised model.

Example:
    >>> import torch
    >>> from vlm_lens.models.mplug_owl2.configuration import AbstractorConfig
    >>> abstractor = VisualAbstractor(AbstractorConfig(hidden_size=32, encoder_hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=1, num_attention_heads=4, num_learnable_queries=4, grid_size=2), text_hidden_size=48)
    >>> abstractor(torch.zeros(3, 5, 32)).shape          # 3 images, 1 + 2x2 ViT tokens each
    torch.Size([3, 5, 48])
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .configuration import AbstractorConfig

__all__ = ["VisualAbstractor", "sincos_positions"]


def _sincos(dim: int, positions: np.ndarray) -> np.ndarray:
    """``[n, dim]``: ``[sin(p * w), cos(p * w)]`` with ``w = 1 / 10000 ** (arange(dim / 2) / (dim / 2))``."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
    angles = np.outer(positions.astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_positions(dim: int, queries: int, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The abstractor's fixed position embeddings.

    Returns:
        ``(q_pos [queries, dim], k_pos [1 + grid**2, dim])``: 1-D over the query index; 2-D over the patch grid,
        row-major (row outer), first half of the channels for the column, second half for the row, and a zero row
        in front for the cls token. float32.

    Example:
        >>> q_pos, k_pos = sincos_positions(8, 4, 2)
        >>> tuple(q_pos.shape), tuple(k_pos.shape), float(k_pos[0].abs().sum())
        ((4, 8), (5, 8), 0.0)
    """
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    grid_embed = np.concatenate([_sincos(dim // 2, cols.reshape(-1)), _sincos(dim // 2, rows.reshape(-1))], axis=1)
    k_pos = np.concatenate([np.zeros((1, dim)), grid_embed], axis=0)
    q_pos = _sincos(dim, np.arange(queries))
    return torch.from_numpy(q_pos).float(), torch.from_numpy(k_pos).float()


class AbstractorAttention(nn.Module):
    """Multi-head attention of the queries over ``[queries ; image features]``, positions on queries and keys."""

    def __init__(self, config: AbstractorConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(config.encoder_hidden_size, d)
        self.value = nn.Linear(config.encoder_hidden_size, d)
        q_pos, k_pos = sincos_positions(d, config.num_learnable_queries, config.grid_size)
        self.register_buffer("q_pos_embed", q_pos)
        self.register_buffer("k_pos_embed", k_pos)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, queries: torch.Tensor, keys_values: torch.Tensor, attn_implementation: str) -> torch.Tensor:
        """``queries [b, q, d]`` (normed), ``keys_values [b, q + tokens, d]`` -> context ``[b, q, d]``."""
        q_pos = self.q_pos_embed.to(queries.dtype)
        k_pos = torch.cat([q_pos, self.k_pos_embed.to(queries.dtype)], dim=0)
        query = self._heads(self.query(queries + q_pos))
        key = self._heads(self.key(keys_values + k_pos))
        value = self._heads(self.value(keys_values))
        scale = self.head_dim ** -0.5
        if attn_implementation == "eager":
            probs = torch.softmax(torch.matmul(query, key.transpose(-1, -2)) * scale, dim=-1)
            context = torch.matmul(probs, value)
        else:
            context = F.scaled_dot_product_attention(query, key, value, scale=scale)
        return context.transpose(1, 2).reshape(queries.shape)


class AbstractorMLP(nn.Module):
    """SwiGLU with a LayerNorm over the intermediate activations: ``w2(ffn_ln(silu(w1 x) * w3 x))``."""

    def __init__(self, config: AbstractorConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.ffn_ln = nn.LayerNorm(config.intermediate_size, eps=config.layer_norm_eps)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.ffn_ln(F.silu(self.w1(x)) * self.w3(x)))


class AbstractorOutput(nn.Module):
    """``x = q + out_proj(context)``, then ``x + mlp(norm2(x))``."""

    def __init__(self, config: AbstractorConfig) -> None:
        super().__init__()
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm2 = nn.LayerNorm(config.hidden_size)
        self.mlp = AbstractorMLP(config)

    def forward(self, context: torch.Tensor, normed_queries: torch.Tensor) -> torch.Tensor:
        x = normed_queries + self.out_proj(context)
        return x + self.mlp(self.norm2(x))


class AbstractorCrossAttention(nn.Module):
    def __init__(self, config: AbstractorConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size)
        self.normk = nn.LayerNorm(config.encoder_hidden_size)
        self.attention = AbstractorAttention(config)
        self.output = AbstractorOutput(config)

    def forward(self, queries: torch.Tensor, image_features: torch.Tensor, attn_implementation: str) -> torch.Tensor:
        normed = self.norm1(queries)
        keys_values = torch.cat([normed, self.normk(image_features)], dim=1)
        return self.output(self.attention(normed, keys_values, attn_implementation), normed)


class AbstractorLayer(nn.Module):
    def __init__(self, config: AbstractorConfig) -> None:
        super().__init__()
        self.crossattention = AbstractorCrossAttention(config)

    def forward(self, queries: torch.Tensor, image_features: torch.Tensor, attn_implementation: str) -> torch.Tensor:
        return self.crossattention(queries, image_features, attn_implementation)


class AbstractorEncoder(nn.Module):
    """The stack of layers: ``(queries [b, q, d], image features [b, tokens, d]) -> queries [b, q, d]``."""

    def __init__(self, config: AbstractorConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(AbstractorLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, queries: torch.Tensor, image_features: torch.Tensor,
                attn_implementation: str = "eager") -> torch.Tensor:
        for layer in self.layers:
            queries = layer(queries, image_features, attn_implementation)
        return queries


class VisualAbstractor(nn.Module):
    """ViT tokens ``[images, 1 + patches, d_vit]`` -> visual tokens ``[images, queries + 1, d_model]``.

    Args:
        config: The parsed ``visual_config["visual_abstractor"]``.
        text_hidden_size: The decoder's width (``visual_fc``'s output and ``vit_eos``'s size).
    """

    def __init__(self, config: AbstractorConfig, text_hidden_size: int) -> None:
        super().__init__()
        self.config = config
        self.query_embeds = nn.Parameter(torch.zeros(1, config.num_learnable_queries, config.hidden_size))
        self.encoder = AbstractorEncoder(config)
        self.visual_fc = nn.Linear(config.hidden_size, text_hidden_size)
        self.vit_eos = nn.Parameter(torch.zeros(1, 1, text_hidden_size))

    def forward(self, image_features: torch.Tensor, attn_implementation: str = "eager") -> torch.Tensor:
        queries = self.query_embeds.expand(image_features.shape[0], -1, -1).to(image_features.dtype)
        queries = self.encoder(queries, image_features, attn_implementation)
        tokens = self.visual_fc(queries)
        return torch.cat([tokens, self.vit_eos.expand(tokens.shape[0], -1, -1).to(tokens.dtype)], dim=1)
