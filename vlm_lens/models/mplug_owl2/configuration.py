"""The configuration of an mPLUG-Owl2 checkpoint, read exactly as the official ``config.json`` writes it.

The official file is a LLaMA config with one extra entry::

    {"model_type": "mplug_owl2", "hidden_size": 4096, ..., "rope_theta": 10000.0,
     "visual_config": {"visual_model": {...ViT-L/14 at 448 px...},
                       "visual_abstractor": {...64 queries, 6 layers...}}}

:class:`MPLUGOwl2Config` is therefore a :class:`~transformers.LlamaConfig` (the decoder's attention modules and
``create_causal_mask`` read it, and vlm_lens switches its ``_attn_implementation``) that also carries
``visual_config``; the two visual parts are parsed into the small frozen dataclasses :class:`VisionConfig` and
:class:`AbstractorConfig`.

This module refuses what it does not understand instead of guessing: other Owl variants (mPLUG-Owl, -Owl2.1,
-Owl3, DocOwl), keys that would change the architecture in ways the port does not implement (``rope_scaling``,
``use_cls_token=False``, ``add_v2t_pos_emb=True``, biases in the decoder), and keys it has never seen. Keys that
only steered training or are generic ``PretrainedConfig`` bookkeeping are listed and ignored.

Example:
    >>> config = MPLUGOwl2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    ...                          vocab_size=100, visual_config={"visual_model": {"hidden_size": 32,
    ...                              "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
    ...                              "image_size": 28, "patch_size": 14},
    ...                          "visual_abstractor": {"hidden_size": 32, "encoder_hidden_size": 32,
    ...                              "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
    ...                              "num_learnable_queries": 4, "grid_size": 2}})
    >>> config.visual_tokens_per_image
    5
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from transformers import LlamaConfig
from transformers.activations import ACT2FN

from ...core.errors import UnsupportedModelError, VlmLensError

__all__ = ["AbstractorConfig", "IMAGE_TOKEN_INDEX", "MPLUGOwl2Config", "VisionConfig", "load_config"]

#: The id that marks an image in ``input_ids`` (``<|image|>`` in prompts); it is no vocabulary id.
IMAGE_TOKEN_INDEX = -200

#: Other members of the Owl family, by ``model_type``: none of them shares this architecture.
OTHER_OWLS = {
    "mplug_owl": "mPLUG-Owl (v1: a separate vision-to-text Q-Former-like abstractor and LLaMA-1 without "
                 "modality-adaptive layers)",
    "mplug_owl2_1": "mPLUG-Owl2.1 (Qwen decoder)",
    "mplug_owl3": "mPLUG-Owl3 (SigLIP encoder, hyper attention layers in a Qwen2 decoder)",
    "mplug_docowl": "mPLUG-DocOwl (shape-adaptive cropping, H-Reducer)",
}
#: The original class, and the port's own (what `save_pretrained` of the port writes).
SUPPORTED_ARCHITECTURES = ("MPLUGOwl2LlamaForCausalLM", "MPLUGOwl2ForCausalLM")

#: Keys every PretrainedConfig of transformers 4.x wrote (generation defaults, bookkeeping): harmless.
_GENERIC_KEYS = frozenset("""
_name_or_path add_cross_attention architectures bad_words_ids begin_suppress_tokens bos_token_id chunk_size_feed_forward
cross_attention_hidden_size decoder_start_token_id diversity_penalty do_sample early_stopping
encoder_no_repeat_ngram_size eos_token_id exponential_decay_length_penalty finetuning_task forced_bos_token_id
forced_eos_token_id id2label is_decoder is_encoder_decoder label2id length_penalty max_length min_length model_type
no_repeat_ngram_size num_beam_groups num_beams num_return_sequences output_attentions output_hidden_states
output_scores pad_token_id prefix problem_type pruned_heads remove_invalid_values repetition_penalty return_dict
return_dict_in_generate sep_token_id suppress_tokens task_specific_params temperature tf_legacy_loss
tie_encoder_decoder tie_word_embeddings tokenizer_class top_k top_p torch_dtype dtype torchscript
transformers_version typical_p use_bfloat16 initializer_range initializer_factor
""".split())

#: Top-level keys of the official checkpoints that steered training or preprocessing only.
_TRAINING_KEYS = frozenset("""
freeze_vision_model tune_visual_abstractor visual_abstractor_lr image_aspect_ratio image_grid_pinpoints
tune_mm_mlp_adapter freeze_mm_mlp_adapter mm_projector_lr mm_use_im_start_end mm_use_im_patch_token
model_max_length tokenizer_padding_side tokenizer_model_max_length use_cache
""".split())

#: Top-level LLaMA keys the port reads (through LlamaConfig).
_TEXT_KEYS = frozenset("""
vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads num_key_value_heads hidden_act
max_position_embeddings rms_norm_eps rope_theta rope_scaling rope_parameters pretraining_tp attention_bias
attention_dropout mlp_bias head_dim visual_config
""".split())


@dataclass(frozen=True)
class VisionConfig:
    """The ViT of ``visual_config["visual_model"]`` (defaults: the 7B checkpoints' ViT-L/14 at 448 px)."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 448
    patch_size: int = 14
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-6
    num_channels: int = 3

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        """Patches plus the cls token."""
        return self.grid_size ** 2 + 1

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class AbstractorConfig:
    """The visual abstractor of ``visual_config["visual_abstractor"]`` (defaults: the 7B checkpoints')."""

    hidden_size: int = 1024
    encoder_hidden_size: int = 1024
    intermediate_size: int = 2816
    num_hidden_layers: int = 6
    num_attention_heads: int = 16
    num_learnable_queries: int = 64
    grid_size: int = 32
    layer_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# Keys read into the dataclasses above, keys that must hold one value, and keys that are ignored (dropout in eval,
# initialisation, an unused projection size, the original's flash-attention switch, which computes the same thing).
_VISION_FIXED = {"use_cls_token": True, "use_post_layernorm": True, "num_channels": 3}
_VISION_IGNORED = {"attention_dropout", "projection_dim", "use_flash_attn"}
_ABSTRACTOR_FIXED = {"use_cls_token": True, "add_v2t_pos_emb": False}
_ABSTRACTOR_IGNORED = {"attention_probs_dropout_prob"}


class MPLUGOwl2Config(LlamaConfig):
    """LLaMA-2 decoder fields plus ``visual_config`` (the ViT and the visual abstractor).

    Attributes:
        visual_config: The official nested dict ``{"visual_model": {...}, "visual_abstractor": {...}}``.
        visual_model_config: The parsed :class:`VisionConfig`.
        visual_abstractor_config: The parsed :class:`AbstractorConfig`.
        visual_tokens_per_image: Decoder positions one image occupies (queries + the end token: 65 at 7B).
    """

    model_type = "mplug_owl2"

    visual_config: dict | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.visual_config is None:
            self.visual_config = {"visual_model": {}, "visual_abstractor": {}}
        _check_text(self)
        vision, abstractor = self.visual_model_config, self.visual_abstractor_config
        if not vision.hidden_size == abstractor.hidden_size == abstractor.encoder_hidden_size:
            raise UnsupportedModelError(
                f"visual_config: the abstractor computes keys over [queries ; image features], so visual_model."
                f"hidden_size ({vision.hidden_size}), visual_abstractor.hidden_size ({abstractor.hidden_size}) and "
                f"visual_abstractor.encoder_hidden_size ({abstractor.encoder_hidden_size}) must be equal.")
        if abstractor.grid_size != vision.grid_size:
            raise UnsupportedModelError(
                f"visual_config.visual_abstractor.grid_size={abstractor.grid_size}, but the ViT's patch grid is "
                f"image_size // patch_size = {vision.image_size} // {vision.patch_size} = {vision.grid_size}; the "
                "abstractor's key position embedding needs one row per patch. Set grid_size to the patch grid.")

    @property
    def visual_model_config(self) -> VisionConfig:
        return _parse(VisionConfig, self.visual_config.get("visual_model") or {}, "visual_model",
                      _VISION_FIXED, _VISION_IGNORED)

    @property
    def visual_abstractor_config(self) -> AbstractorConfig:
        section = dict(self.visual_config.get("visual_abstractor") or {})
        if section.get("grid_size") is None:
            section["grid_size"] = 32  # the original's hard-wired default when the key is null
        return _parse(AbstractorConfig, section, "visual_abstractor", _ABSTRACTOR_FIXED, _ABSTRACTOR_IGNORED)

    @property
    def visual_tokens_per_image(self) -> int:
        return self.visual_abstractor_config.num_learnable_queries + 1


def load_config(source: str | Path | dict) -> MPLUGOwl2Config:
    """Read an official mPLUG-Owl2 ``config.json`` (a folder, the file, or its parsed dict).

    Raises:
        UnsupportedModelError: Another Owl variant, or a key the port does not understand (all such keys are listed).
        VlmLensError: The file is missing or not JSON.

    Example:
        >>> config = load_config("checkpoints/q-align")  # doctest: +SKIP
    """
    if isinstance(source, dict):
        data, where = dict(source), "config"
    else:
        path = Path(source)
        path = path / "config.json" if path.is_dir() else path
        if not path.exists():
            raise VlmLensError(f"{str(path)!r} does not exist; pass an mPLUG-Owl2 checkpoint folder with config.json.")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise VlmLensError(f"{path} is not valid JSON ({err}).") from None
        where = str(path)
    model_type = data.get("model_type")
    if model_type in OTHER_OWLS:
        raise UnsupportedModelError(f"{where}: model_type={model_type!r} is {OTHER_OWLS[model_type]}, which is not "
                                    "supported; vlm_lens implements mPLUG-Owl2 (LLaMA-2 decoder: mPLUG-Owl2, "
                                    "Q-Instruct, Q-Align) only.")
    if model_type != "mplug_owl2":
        raise UnsupportedModelError(f"{where}: model_type={model_type!r}; this loader reads mPLUG-Owl2 checkpoints "
                                    "(model_type 'mplug_owl2').")
    architectures = data.get("architectures") or list(SUPPORTED_ARCHITECTURES)
    unknown_arch = [a for a in architectures if a not in SUPPORTED_ARCHITECTURES]
    if unknown_arch:
        raise UnsupportedModelError(f"{where}: architectures={unknown_arch} is not a variant vlm_lens supports "
                                    f"(expected {list(SUPPORTED_ARCHITECTURES)}: mPLUG-Owl2 on a LLaMA-2 decoder). "
                                    "Other Owl variants (e.g. mPLUG-Owl2.1 on Qwen) are not supported.")
    if not isinstance(data.get("visual_config"), dict):
        raise UnsupportedModelError(f"{where}: no visual_config dict; an mPLUG-Owl2 checkpoint describes its ViT and "
                                    "abstractor in visual_config = {'visual_model': {...}, "
                                    "'visual_abstractor': {...}}.")
    unknown = sorted(set(data) - _TEXT_KEYS - _GENERIC_KEYS - _TRAINING_KEYS)
    if unknown:
        raise UnsupportedModelError(f"{where}: keys {unknown} are not part of the mPLUG-Owl2 configuration this port "
                                    "implements, so it cannot tell whether they change the model. If they only "
                                    "steered training, delete them from config.json.")
    if data.get("rope_scaling") is not None:
        raise UnsupportedModelError(f"{where}: rope_scaling={data['rope_scaling']!r}; the mPLUG-Owl2 port implements "
                                    "plain RoPE only (the official checkpoints use none). Remove the scaling or use "
                                    "the original code.")
    kwargs = {k: v for k, v in data.items()
              if (k not in _TRAINING_KEYS or k == "use_cache") and k != "rope_scaling"}
    return MPLUGOwl2Config(**kwargs)


def _check_text(config: MPLUGOwl2Config) -> None:
    rope_type = (config.rope_parameters or {}).get("rope_type", "default")
    if rope_type != "default":
        raise UnsupportedModelError(f"rope_scaling / rope_parameters of type {rope_type!r}: the mPLUG-Owl2 port "
                                    "implements plain RoPE only (the official checkpoints use none); remove the "
                                    "scaling or use the original code.")
    for key in ("attention_bias", "mlp_bias", "tie_word_embeddings"):
        if getattr(config, key, False):
            raise UnsupportedModelError(f"{key}=True: mPLUG-Owl2's decoder has no biases and an untied lm_head; "
                                        "the port refuses a checkpoint that says otherwise.")
    if config.hidden_act not in ACT2FN:
        raise UnsupportedModelError(f"hidden_act={config.hidden_act!r} is not an activation transformers knows.")
    if config.num_attention_heads % config.num_key_value_heads:
        raise UnsupportedModelError(f"num_attention_heads={config.num_attention_heads} is not a multiple of "
                                    f"num_key_value_heads={config.num_key_value_heads}.")
    unknown = sorted(set(config.visual_config) - {"visual_model", "visual_abstractor"})
    if unknown:
        raise UnsupportedModelError(f"visual_config has sections {unknown}; mPLUG-Owl2 has only 'visual_model' and "
                                    "'visual_abstractor' (another Owl variant?).")


def _parse(cls: type, section: dict, name: str, fixed: dict, ignored: set) -> Any:
    if not isinstance(section, dict):
        raise UnsupportedModelError(f"visual_config.{name} must be a dict, got {type(section).__name__}.")
    known = {f.name for f in fields(cls)}
    for key, value in fixed.items():
        if key in section and section[key] != value:
            raise UnsupportedModelError(f"visual_config.{name}.{key}={section[key]!r}: the mPLUG-Owl2 port "
                                        f"implements {key}={value!r} only (the released checkpoints).")
    unknown = sorted(set(section) - known - set(fixed) - ignored - _GENERIC_KEYS)
    if unknown:
        raise UnsupportedModelError(f"visual_config.{name} has keys {unknown} that the mPLUG-Owl2 port does not "
                                    "know; it refuses to guess what they change.")
    values = {k: section[k] for k in known if k in section and section[k] is not None}
    parsed = cls(**values)
    if parsed.hidden_size % parsed.num_attention_heads:
        raise UnsupportedModelError(f"visual_config.{name}: hidden_size={parsed.hidden_size} is not a multiple of "
                                    f"num_attention_heads={parsed.num_attention_heads}.")
    if name == "visual_model" and parsed.hidden_act not in ACT2FN:
        raise UnsupportedModelError(f"visual_config.visual_model.hidden_act={parsed.hidden_act!r} is unknown.")
    return parsed
