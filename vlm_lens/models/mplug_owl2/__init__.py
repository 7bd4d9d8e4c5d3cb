"""mPLUG-Owl2 and its fine-tunes (Q-Instruct, Q-Align): a native port on transformers v5 and its vlm_lens adapter.

The original remote code runs only on transformers 4.31-4.37. This package re-implements the model from its
architecture (one idea per file; a random-init checkpoint in the official layout for tests and docs is
``vlm_lens.testing.tiny_mplug_owl2``) and loads the official checkpoints with their key names unchanged:

- ``configuration.py`` — the official ``config.json`` (LLaMA fields + ``visual_config``); refuses other variants;
- ``vision.py`` — the ViT-L/14 (fused, per-head interleaved qkv; post-LN on every token);
- ``abstractor.py`` — the visual abstractor (64 queries -> 65 visual tokens per image);
- ``decoder.py`` — the modality-adaptive LLaMA layer (per-modality k/v projections and norms);
- ``splice.py`` — -200 image markers -> visual positions, embeddings and modality indicators;
- ``modeling.py`` — ``MPLUGOwl2ForCausalLM``: forward with the original inputs, ``generate``;
- ``weights.py`` — strict loading from safetensors or sharded ``.bin`` (``torch.load(weights_only=True)``);
- ``processing.py`` — mean-colour padding + CLIP preprocessing, marker-aware tokenization;
- ``prompts.py`` — the named prompt formats (Q-Instruct here; ``vlm_lens.biqa`` registers Q-Align's);
- ``tokenization.py`` — chunk-by-chunk SentencePiece encoding around ``<|image|>``, as the original;
- ``adapter.py`` — what vlm_lens needs to trace it (65 visual positions per image, no grid);

Example:
    >>> import vlm_lens as vl                                                     # doctest: +SKIP
    >>> from vlm_lens.biqa import qalign_score                                    # doctest: +SKIP
    >>> m = vl.load("checkpoints/one-align")                                      # doctest: +SKIP
    >>> qalign_score(m, "photo.jpg", weights="1-5")                               # doctest: +SKIP
"""

from .adapter import MPLUGOwl2Adapter
from .configuration import IMAGE_TOKEN_INDEX, MPLUGOwl2Config, load_config
from .modeling import MPLUGOwl2ForCausalLM
from .processing import IMAGE_PLACEHOLDER, MPLUGOwl2Processor, expand2square
from .prompts import PROMPT_FORMATS, PromptFormat, register_prompt_format
from .weights import load_model

__all__ = ["IMAGE_PLACEHOLDER", "IMAGE_TOKEN_INDEX", "MPLUGOwl2Adapter", "MPLUGOwl2Config", "MPLUGOwl2ForCausalLM",
           "MPLUGOwl2Processor", "PROMPT_FORMATS", "PromptFormat", "expand2square", "load_config", "load_model",
           "register_prompt_format"]
