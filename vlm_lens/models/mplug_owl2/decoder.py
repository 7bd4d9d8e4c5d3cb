"""The modality-adaptive LLaMA decoder layer of mPLUG-Owl2.

Module tree of one layer (official keys under ``model.layers.{i}``)::

    MultiwayDecoderLayer
    ├── input_layernorm           Multiway: multiway[0] (text) / multiway[1] (visual) LlamaRMSNorm
    ├── self_attn                 MultiwayAttention
    │   ├── q_proj, o_proj        Linear, shared
    │   └── k_proj, v_proj        Multiway of two Linear: keys and values are per modality
    ├── post_attention_layernorm  Multiway of two LlamaRMSNorm
    └── mlp                       LlamaMLP, shared

Each token is routed by its modality indicator (0 text, 1 visual; the 65 tokens of every image are visual). The
attention itself is LLaMA's: rotary embeddings on q and k, then dispatch through transformers' attention interface
with ``self.config._attn_implementation`` (``eager`` / ``sdpa`` / ``flash_attention_2`` / whatever vlm_lens
registers to compute attention rows), so everything that works on ``LlamaAttention`` works here.

Routing costs one gather and one scatter per multiway module, and nothing at all when every token has the same
modality (every cached decoding step): :class:`ModalityRouting` computes the index sets once per forward.

Example:
    >>> import torch
    >>> routing = ModalityRouting(torch.tensor([[0, 1, 1, 0]]))
    >>> routing.single, routing.index[1].tolist()
    (None, [1, 2])
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from transformers.cache_utils import Cache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from .configuration import MPLUGOwl2Config

__all__ = ["ModalityRouting", "Multiway", "MultiwayAttention", "MultiwayDecoderLayer"]


class ModalityRouting:
    """Which flattened ``(batch * pos)`` rows go through which modality's module.

    Args:
        indicators: ``[batch, pos]`` integer modality per position (0 text, 1 visual).

    Attributes:
        indicators: The tensor given.
        single: The modality of every row when all rows share one (no gather needed), else None.
        index: Per modality, the flat row indices (only when ``single`` is None).
    """

    def __init__(self, indicators: torch.Tensor) -> None:
        self.indicators = indicators
        flat = indicators.reshape(-1)
        visual = flat.bool()
        n_visual = int(visual.sum())
        self.single: int | None = 0 if n_visual == 0 else 1 if n_visual == flat.numel() else None
        self.index: tuple[torch.Tensor, torch.Tensor] | tuple = ()
        if self.single is None:
            self.index = (torch.nonzero(~visual).squeeze(1), torch.nonzero(visual).squeeze(1))

    @classmethod
    def of(cls, indicators: "torch.Tensor | ModalityRouting") -> "ModalityRouting":
        return indicators if isinstance(indicators, ModalityRouting) else cls(indicators)


class Multiway(nn.Module):
    """Two copies of a module, ``multiway[0]`` for text tokens and ``multiway[1]`` for visual tokens.

    Args:
        make: Builds one copy (called twice).
    """

    def __init__(self, make: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.multiway = nn.ModuleList([make(), make()])

    def forward(self, hidden_states: torch.Tensor, routing: ModalityRouting) -> torch.Tensor:
        if routing.single is not None:
            return self.multiway[routing.single](hidden_states)
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        parts = [module(flat.index_select(0, index)) for module, index in zip(self.multiway, routing.index)]
        out = parts[0].new_empty(flat.shape[0], parts[0].shape[-1])
        for part, index in zip(parts, routing.index):
            out.index_copy_(0, index, part)
        return out.view(*hidden_states.shape[:-1], out.shape[-1])


class MultiwayAttention(nn.Module):
    """LLaMA attention whose key and value projections are per modality.

    Attributes read by transformers' attention functions and by vlm_lens: ``config`` (``_attn_implementation``),
    ``num_key_value_groups``, ``is_causal``, ``scaling``, ``layer_idx``.
    """

    def __init__(self, config: MPLUGOwl2Config, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim ** -0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        width, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        self.q_proj = nn.Linear(width, heads * self.head_dim, bias=False)
        self.k_proj = Multiway(lambda: nn.Linear(width, kv_heads * self.head_dim, bias=False))
        self.v_proj = Multiway(lambda: nn.Linear(width, kv_heads * self.head_dim, bias=False))
        self.o_proj = nn.Linear(heads * self.head_dim, width, bias=False)

    def forward(self, hidden_states: torch.Tensor, routing: ModalityRouting,
                position_embeddings: tuple[torch.Tensor, torch.Tensor], attention_mask: torch.Tensor | None,
                cache: Cache | None = None, attn_implementation: str | None = None,
                **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[b, pos, d] -> ([b, pos, d], weights [b, head, pos, kv] or None)``.

        ``attn_implementation`` overrides the config's for this call (the model passes ``"eager"`` when the caller
        asked for ``output_attentions``).
        """
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        key = self.k_proj(hidden_states, routing).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states, routing).view(shape).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn_implementation or self.config._attn_implementation,
                                                          eager_attention_forward)
        output, weights = interface(self, query, key, value, attention_mask,
                                    dropout=0.0 if not self.training else self.attention_dropout,
                                    scaling=self.scaling, **kwargs)
        output = self.o_proj(output.reshape(*hidden_states.shape[:-1], -1).contiguous())
        return output, weights


class MultiwayDecoderLayer(nn.Module):
    """A LLaMA block whose two RMSNorms and k/v projections are chosen per token by modality.

    ``forward`` returns the new residual stream ``[b, pos, d]`` (v5 style), or ``(hidden, attention weights)`` when
    ``output_attentions=True``.
    """

    def __init__(self, config: MPLUGOwl2Config, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = MultiwayAttention(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = Multiway(lambda: LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps))
        self.post_attention_layernorm = Multiway(lambda: LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps))

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                modality_indicators: torch.Tensor | ModalityRouting | None = None, cache: Cache | None = None,
                output_attentions: bool = False, **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Args:
            hidden_states: ``[b, pos, d]``.
            attention_mask: The mask built by ``create_causal_mask`` for the model's attention implementation.
            position_embeddings: ``(cos, sin)`` of the rotary embedding for these positions.
            modality_indicators: ``[b, pos]`` (0 text, 1 visual) or a prebuilt :class:`ModalityRouting`; None:
                all text.
            cache: The KV cache (updated in place).
            output_attentions: Also return the attention probabilities (computed eagerly).
        """
        if modality_indicators is None:
            modality_indicators = torch.zeros(hidden_states.shape[:2], dtype=torch.long, device=hidden_states.device)
        routing = ModalityRouting.of(modality_indicators)
        residual = hidden_states
        attended, weights = self.self_attn(self.input_layernorm(hidden_states, routing), routing,
                                           position_embeddings, attention_mask, cache=cache,
                                           attn_implementation="eager" if output_attentions else None, **kwargs)
        hidden_states = residual + attended
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states, routing))
        return (hidden_states, weights) if output_attentions else hidden_states
