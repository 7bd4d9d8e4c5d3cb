"""The mPLUG-Owl2 model: vision tower + abstractor + modality-adaptive LLaMA decoder, on transformers v5 blocks.

Module tree (the official checkpoint keys, unchanged)::

    MPLUGOwl2ForCausalLM                 PreTrainedModel + GenerationMixin
    ├── model                            MPLUGOwl2Model
    │   ├── embed_tokens                 Embedding(vocab, d)
    │   ├── layers[i]                    MultiwayDecoderLayer   (decoder.py)
    │   ├── norm                         LlamaRMSNorm
    │   ├── rotary_emb                   LlamaRotaryEmbedding   (no weights)
    │   ├── vision_model                 VisionModel            (vision.py)
    │   └── visual_abstractor            VisualAbstractor       (abstractor.py)
    └── lm_head                          Linear(d -> vocab), untied

``forward`` takes the original code's inputs unchanged (``input_ids`` with one -200 per image, ``images`` = pixel
values, ``attention_mask``, ``output_hidden_states``, ``output_attentions``, ``use_cache``) and returns HF-style
outputs whose ``hidden_states`` follow the HF convention the original also had: ``[embeddings, layer 0, ...,
layer n-2, norm(layer n-1)]``. The outputs also carry the spliced ``attention_mask``, the ``position_ids`` and the
``modality_indicators`` the decoder layers saw.

Where the port deliberately differs from the original (see docs/families/mplug_owl2.md): it is correct under left
padding (the mask is spliced at the image, positions count real tokens only, the padding mask survives cached
decoding), and it accepts ``images_expanded=True`` inputs whose ids already have one entry per decoder position
(vlm_lens's layout). On unpadded inputs both agree with the original to float32 rounding.

Example:
    >>> out = model(input_ids=torch.tensor([[1, 23, -200, 41]]), images=pixel_values,   # doctest: +SKIP
    ...             output_hidden_states=True)
    >>> out.logits.shape                        # 3 text positions + 65 visual positions  # doctest: +SKIP
    torch.Size([1, 68, 32000])
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
)
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding

from ...core.errors import VlmLensError
from .abstractor import AbstractorAttention, VisualAbstractor, sincos_positions
from .configuration import IMAGE_TOKEN_INDEX, MPLUGOwl2Config
from .decoder import ModalityRouting, MultiwayDecoderLayer
from .splice import check_image_count, expand_image_markers, splice_embeddings
from .vision import VisionEmbeddings, VisionModel

__all__ = ["MPLUGOwl2ForCausalLM", "MPLUGOwl2Model", "MPLUGOwl2Output", "MPLUGOwl2CausalLMOutput"]


@dataclass
class MPLUGOwl2Output(BaseModelOutputWithPast):
    """:class:`~transformers.modeling_outputs.BaseModelOutputWithPast` plus the layout the decoder saw.

    Attributes:
        attention_mask: ``[b, past + pos]`` 2-D padding mask over the spliced sequence (cache included).
        position_ids: ``[b, pos]`` rotary positions of this call's positions.
        modality_indicators: ``[b, pos]`` 1 at visual positions, 0 at text and padding.
        labels: ``[b, pos]`` the given labels at decoder positions (-100 at visual positions and padding).
    """

    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    modality_indicators: torch.Tensor | None = None
    labels: torch.Tensor | None = None


@dataclass
class MPLUGOwl2CausalLMOutput(CausalLMOutputWithPast):
    """:class:`~transformers.modeling_outputs.CausalLMOutputWithPast` plus the fields of :class:`MPLUGOwl2Output`."""

    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    modality_indicators: torch.Tensor | None = None


class MPLUGOwl2PreTrainedModel(PreTrainedModel):
    config_class = MPLUGOwl2Config
    config: MPLUGOwl2Config
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["MultiwayDecoderLayer", "VisionLayer", "AbstractorLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # Some official checkpoints carry the rotary buffer of transformers 4.31; it is recomputed, never loaded.
    _keys_to_ignore_on_load_unexpected = [r"\.rotary_emb\.inv_freq$"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, VisionEmbeddings):
            nn.init.normal_(module.cls_token, std=std)
            nn.init.normal_(module.position_embedding, std=std)
        elif isinstance(module, VisualAbstractor):
            nn.init.normal_(module.query_embeds, std=std)
            nn.init.normal_(module.vit_eos, std=std)
        elif isinstance(module, AbstractorAttention):
            super()._init_weights(module)
            q_pos, k_pos = sincos_positions(module.q_pos_embed.shape[-1], module.q_pos_embed.shape[0],
                                            int(round((module.k_pos_embed.shape[0] - 1) ** 0.5)))
            module.q_pos_embed.copy_(q_pos)
            module.k_pos_embed.copy_(k_pos)
        else:
            super()._init_weights(module)


class MPLUGOwl2Model(nn.Module):
    """Embeddings, image splicing and the decoder stack; ``forward`` returns :class:`MPLUGOwl2Output`."""

    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MultiwayDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config)
        self.vision_model = VisionModel(config.visual_model_config)
        self.visual_abstractor = VisualAbstractor(config.visual_abstractor_config, config.hidden_size)
        #: Decoder positions per image: the abstractor's queries + vit_eos.
        self.tokens_per_image = config.visual_tokens_per_image

    def _visual_attention(self) -> str:
        return "eager" if self.config._attn_implementation == "eager" else "sdpa"

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``pixel values [images, 3, S, S] -> visual tokens [images, T, d]`` (T = queries + 1)."""
        attention = self._visual_attention()
        features = self.vision_model(images, attention).last_hidden_state
        return self.visual_abstractor(features, attention)

    def forward(self, input_ids: torch.Tensor | None = None, images: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, modality_indicators: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, cache: Cache | None = None, use_cache: bool | None = None,
                output_attentions: bool = False, output_hidden_states: bool = False, images_expanded: bool = False,
                labels: torch.Tensor | None = None, **kwargs: Any) -> MPLUGOwl2Output:
        """See :meth:`MPLUGOwl2ForCausalLM.forward`."""
        if (input_ids is None) == (inputs_embeds is None):
            raise VlmLensError("pass exactly one of input_ids (ids with -200 image markers) and inputs_embeds.")
        if input_ids is not None:
            inputs_embeds, modality_indicators, attention_mask, labels = self._embed(
                input_ids, images, attention_mask, images_expanded, labels)
        elif images is not None:
            raise VlmLensError("images were given with inputs_embeds; the images are spliced in only when input_ids "
                               "mark where they go (-200). Pass input_ids, or splice the embeddings yourself.")
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past = cache.get_seq_length() if cache is not None else 0
        batch, length = inputs_embeds.shape[:2]
        attention_mask = self._full_mask(attention_mask, batch, past + length, inputs_embeds.device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
        if modality_indicators is None:  # cached decoding: new tokens are text
            modality_indicators = torch.zeros(batch, length, dtype=torch.long, device=inputs_embeds.device)
        routing = ModalityRouting(modality_indicators)

        config = self.config
        if output_attentions and config._attn_implementation != "eager":
            config = copy.copy(config)  # build an eager mask for this call only
            config._attn_implementation_internal = "eager"
        mask = create_causal_mask(config=config, inputs_embeds=inputs_embeds,
                                  attention_mask=None if bool(attention_mask.all()) else attention_mask,
                                  cache=cache, position_ids=position_ids)
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids=position_ids)

        hidden_states = inputs_embeds
        all_hidden, all_attentions = [], []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden_states)
            out = layer(hidden_states, attention_mask=mask, position_embeddings=position_embeddings,
                        modality_indicators=routing, cache=cache, output_attentions=output_attentions, **kwargs)
            if output_attentions:
                out, weights = out
                all_attentions.append(weights)
            hidden_states = out
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden.append(hidden_states)
        return MPLUGOwl2Output(last_hidden_state=hidden_states, cache=cache if use_cache else None,
                               hidden_states=tuple(all_hidden) if output_hidden_states else None,
                               attentions=tuple(all_attentions) if output_attentions else None,
                               attention_mask=attention_mask, position_ids=position_ids,
                               modality_indicators=modality_indicators, labels=labels)

    def _embed(self, input_ids: torch.Tensor, images: torch.Tensor | None, attention_mask: torch.Tensor | None,
               expanded: bool, labels: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Ids (either layout) + images -> ``(inputs_embeds, modality_indicators, attention_mask, labels)`` at
        decoder positions."""
        n_images = 0 if images is None else int(images.shape[0])
        check_image_count(input_ids, n_images, self.tokens_per_image, expanded)
        if expanded:
            if labels is not None:
                labels = labels.masked_fill(input_ids == IMAGE_TOKEN_INDEX, -100)
        else:
            input_ids, attention_mask, labels = expand_image_markers(input_ids, attention_mask,
                                                                     self.tokens_per_image, labels=labels)
        visual = self.encode_images(images) if n_images else None
        embeds, indicators = splice_embeddings(self.embed_tokens, input_ids, visual)
        return embeds, indicators, attention_mask, labels

    @staticmethod
    def _full_mask(attention_mask: torch.Tensor | None, batch: int, total: int,
                   device: torch.device) -> torch.Tensor:
        """The 2-D mask over past + new positions; a mask of another length is accepted only when all ones (the
        original replaced the mask by ones while decoding; a real padding mask must cover the spliced sequence)."""
        if attention_mask is None:
            return torch.ones(batch, total, dtype=torch.long, device=device)
        if attention_mask.ndim != 2:
            raise VlmLensError(f"attention_mask: expected a 2-D [batch, positions] padding mask, got shape "
                               f"{tuple(attention_mask.shape)}.")
        if attention_mask.shape[1] == total:
            return attention_mask.long()
        if bool(attention_mask.all()):
            return torch.ones(batch, total, dtype=torch.long, device=device)
        raise VlmLensError(f"attention_mask has {attention_mask.shape[1]} columns but the cache and the new tokens "
                           f"cover {total} spliced positions, and it holds padding. Pass the mask of the spliced "
                           "sequence (outputs.attention_mask of the previous call, extended by one per new token).")


class MPLUGOwl2ForCausalLM(MPLUGOwl2PreTrainedModel, GenerationMixin):
    """mPLUG-Owl2 (Q-Instruct, Q-Align) with its language-model head.

    Example:
        >>> model = load_model("checkpoints/q-instruct")                                 # doctest: +SKIP
        >>> ids = model.generate(input_ids=ids_with_markers, images=pixel_values,        # doctest: +SKIP
        ...                      max_new_tokens=16)

    Args:
        config: An :class:`~vlm_lens.models.mplug_owl2.MPLUGOwl2Config`.
    """

    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__(config)
        self.model = MPLUGOwl2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``pixel values [images, 3, S, S] -> visual tokens [images, T, d]``: what replaces each -200."""
        return self.model.encode_images(images)

    def forward(self, input_ids: torch.Tensor | None = None, images: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, modality_indicators: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, cache: Cache | None = None,
                past_key_values: Cache | None = None, use_cache: bool | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, logits_to_keep: int | torch.Tensor = 0,
                images_expanded: bool = False, labels: torch.Tensor | None = None,
                **kwargs: Any) -> MPLUGOwl2CausalLMOutput | tuple:
        """Run the model.

        Args:
            input_ids: ``[b, n]`` token ids; each -200 (``<|image|>``) is an image slot. With
                ``images_expanded=True``, each image instead fills ``T`` consecutive -200 (one per decoder position).
            images: ``[images, 3, S, S]`` pixel values, one per slot, in order (row by row); None for text only.
            attention_mask: ``[b, n]`` 1 for real ids, 0 for padding (any side). While decoding with a cache: the
                spliced mask (``outputs.attention_mask`` extended by one per new token); an all-ones mask of
                another length is accepted, as the original accepted it.
            modality_indicators: ``[b, L]`` with ``inputs_embeds`` only (default: all text).
            inputs_embeds: Already spliced ``[b, L, d]`` embeddings instead of ``input_ids``.
            cache, past_key_values: A transformers ``Cache`` (the two names are aliases).
            use_cache: Return the updated cache.
            output_attentions: Also return every layer's attention probabilities (computed eagerly).
            output_hidden_states: Also return ``[embeddings, layer 0, ..., layer n-2, norm(layer n-1)]``.
            return_dict: False for a tuple.
            logits_to_keep: 0 for all positions, ``k`` for the last ``k``, or a tensor of positions (1-D, or
                ``[b, k]`` per row).
            images_expanded: ``input_ids`` already hold ``T`` -200 per image (vlm_lens's decoder positions).
            labels: ``[b, n]`` next-token targets aligned with ``input_ids`` (-100: ignored); the visual positions
                are ignored. Gives ``loss`` (shifted cross-entropy, as the original's training).

        Returns:
            :class:`MPLUGOwl2CausalLMOutput`: ``logits [b, L, vocab]``, ``cache``, ``hidden_states``,
            ``attentions``, and the spliced ``attention_mask``, ``position_ids`` and ``modality_indicators``.
        """
        if past_key_values is not None:
            if cache is not None and cache is not past_key_values:
                raise VlmLensError("cache and past_key_values are the same argument; pass one of them.")
            cache = past_key_values
        if use_cache is None:
            use_cache = bool(self.config.use_cache) and not self.training
        outputs = self.model(input_ids=input_ids, images=images, attention_mask=attention_mask,
                             modality_indicators=modality_indicators, inputs_embeds=inputs_embeds, cache=cache,
                             use_cache=use_cache, output_attentions=bool(output_attentions),
                             output_hidden_states=bool(output_hidden_states), images_expanded=images_expanded,
                             labels=labels, **kwargs)
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            if logits.shape[1] != outputs.last_hidden_state.shape[1]:
                raise VlmLensError("labels need the logits of every position; leave logits_to_keep at 0.")
            loss = self.loss_function(logits=logits, labels=outputs.labels, vocab_size=self.config.vocab_size)
        result = MPLUGOwl2CausalLMOutput(loss=loss, logits=logits, cache=outputs.cache,
                                         hidden_states=outputs.hidden_states,
                                         attentions=outputs.attentions, attention_mask=outputs.attention_mask,
                                         position_ids=outputs.position_ids,
                                         modality_indicators=outputs.modality_indicators)
        return result if return_dict is not False else result.to_tuple()

    # ------------------------------------------------------------------------------------------------ generation
    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, images: torch.Tensor | None = None,
                                      is_first_iteration: bool | None = False, **kwargs: Any) -> dict[str, Any]:
        """The images are encoded in the first step only; later steps feed one new (text) token against the cache."""
        inputs = super().prepare_inputs_for_generation(input_ids, is_first_iteration=is_first_iteration, **kwargs)
        if images is not None and (is_first_iteration or not kwargs.get("use_cache", True)):
            inputs["images"] = images
        return inputs

    def _update_model_kwargs_for_generation(self, outputs: Any, model_kwargs: dict[str, Any],
                                            is_encoder_decoder: bool = False,
                                            num_new_tokens: int = 1) -> dict[str, Any]:
        """With a cache, continue from the spliced mask: the cache holds the image's positions, the caller's ids do
        not. (Without a cache every step re-splices the caller's ids, so their mask is kept.)"""
        spliced = getattr(outputs, "attention_mask", None)
        if spliced is not None and getattr(outputs, "cache", None) is not None:
            model_kwargs["attention_mask"] = spliced
        return super()._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder,
                                                           num_new_tokens)
