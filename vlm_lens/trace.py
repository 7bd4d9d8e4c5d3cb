"""``trace``: inputs -> (generation) -> one teacher-forced pass with capture -> ``Trace``.

Why one teacher-forced pass after generation, instead of capturing while generating: under causal masking, the
hidden state and attention row at position ``t`` depend only on tokens ``<= t``, so a single forward over
prompt + answer reproduces what each decoding step computed (the tests check it against step-by-step decoding
with the KV cache), at the cost of one forward instead of one capture per step, and with every layer's states
for every position in one place.

Batches are left padded (as ``generate`` needs); position ids count real tokens only, so each sample's Trace equals
the one it gets alone. Every position in a returned Trace is a position of that sample's own, unpadded sequence.

Example:
    >>> import vlm_lens as vl
    >>> m = vl.load("checkpoints/llava-1.5-7b-hf")                           # doctest: +SKIP
    >>> t = vl.trace(m, "img.jpg", "Rate the quality of this image.", generate=16)  # doctest: +SKIP
    >>> t.answer, t.attention.shape                                          # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import secrets
from typing import Any, Sequence

import pandas as pd
import torch

from . import __version__
from .capture import Capture
from .errors import VlmLensError
from .images import ImageLike, load_image
from .loading import LensModel
from .models.base import Encoded, Prompt, Span
from .sampling import RowSampler
from .trace_result import Trace

__all__ = ["trace", "trace_batch"]

#: Tokens generated when ``generate=True``.
DEFAULT_NEW_TOKENS = 32


def trace(model: LensModel, image: ImageLike | Sequence[ImageLike] | None, prompt: str | Sequence[str],
          **kwargs: Any) -> Trace | list[Trace]:
    """Trace one prompt (or, given a list of prompts, a batch: see :func:`trace_batch`).

    Args:
        model: A model from :func:`vlm_lens.load` or :func:`vlm_lens.wrap`.
        image: A path, PIL image or array; a list of them for several images in one prompt; None for text only.
        prompt: The user's question. It is formatted with the model's chat template; the images come first in the
            user turn unless the prompt contains the image placeholder (e.g. ``<image>``) once per image.
        **kwargs: See :func:`trace_batch`.

    Returns:
        A :class:`~vlm_lens.Trace` (a list of them for a list of prompts).

    Example:
        >>> t = vl.trace(m, "cat.jpg", "How would you rate the quality of this image?")   # doctest: +SKIP
        >>> t.tokens.segment.value_counts()                                               # doctest: +SKIP
    """
    if isinstance(prompt, (list, tuple)):
        if not isinstance(image, (list, tuple)) or len(image) != len(prompt):
            raise VlmLensError(f"a list of {len(prompt)} prompts needs a list of as many images (one image, a "
                               f"list of images, or None per prompt); got {type(image).__name__}"
                               f"{f' of length {len(image)}' if isinstance(image, (list, tuple)) else ''}.")
        return trace_batch(model, list(image), list(prompt), **kwargs)
    return trace_batch(model, [image], [prompt], **kwargs)[0]


@torch.no_grad()
def trace_batch(model: LensModel, images: Sequence[Any], prompts: Sequence[str], *,
                generate: int | bool = 0, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                seed: int | Sequence[int] | None = None, generation_kwargs: dict[str, Any] | None = None,
                system: str | None = None, template: bool = True, prefill: str | None = None,
                layers: Sequence[int] | None = None, positions: Sequence[int] | None = None,
                query_positions: Sequence[int] | None = None, attention: bool | Sequence[int] = True,
                dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> list[Trace]:
    """Trace a batch of prompts in one left-padded forward; each Trace equals the one its sample gets alone.

    Args:
        model: A model from :func:`vlm_lens.load` or :func:`vlm_lens.wrap`.
        images: Per sample: an image, a list of images, or None.
        prompts: Per sample: the user's question.
        generate: Generate up to this many tokens first (``True``: 32), then trace prompt + answer.
        do_sample, temperature, top_p, seed: Sampling settings (greedy by default). Each sample draws from its
            own generator, seeded with ``seed`` (one int for all samples, or one per sample; None: a fresh random
            seed, recorded in ``meta["seed"]``), so a sampled answer does not depend on the rest of the batch and
            the global random state is not touched.
        generation_kwargs: Further keyword arguments for ``model.generate``.
        system: A system prompt, where the chat template has a place for it.
        template: False to use each prompt verbatim (it must then contain the image placeholders).
        prefill: Text the answer starts with, appended after the chat template's assistant prefix (e.g. Q-Align's
            ``"The quality of the image is"``); it is labelled ``system``, and left out when the rendered prompt
            already ends with it.
        layers: Hidden-state indices to keep, 0..n_layers (0 = decoder input); default all.
        positions: Sequence positions whose hidden states are kept (negative counts from the end); default all.
        query_positions: Positions whose attention rows and logits are kept. Default: with generation, the last
            prompt position and every response position (the positions that predict and hold the answer);
            without, the last position.
        attention: True for rows in every decoder layer, False for none, or decoder layer indices (0-based).
        dtype, device: Where and how hidden states are kept (default: as computed).

    Returns:
        One :class:`~vlm_lens.Trace` per sample.
    """
    if not isinstance(model, LensModel):
        raise VlmLensError(f"model: expected the result of vl.load(...) or vl.wrap(...), got {type(model).__name__}.")
    if len(images) != len(prompts):
        raise VlmLensError(f"{len(images)} image entries for {len(prompts)} prompts; pass one entry (an image, a list "
                           "of images, or None) per prompt.")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise VlmLensError(f"prompts[{i}]: expected a string, got {type(prompt).__name__}.")
    new_tokens = _check_generate(generate)
    adapter = model.adapter
    n_layers = adapter.n_layers
    hidden_layers = _check_indices(layers, n_layers + 1, "layers", "hidden-state indices 0..n_layers")
    attention_layers = _attention_layers(attention, n_layers)
    pictures = [_images_of(entry, i) for i, entry in enumerate(images)]
    rendered = [_prefilled(adapter.format_prompt(p, len(pics), system=system, template=template), prefill)
                for p, pics in zip(prompts, pictures)]
    seeds = _seeds(seed, len(prompts)) if do_sample else [None] * len(prompts)
    encoded = adapter.encode(pictures, rendered)
    _check_length(adapter, encoded, new_tokens)

    responses = [[] for _ in prompts]
    if new_tokens:
        responses = _generate(model, encoded, new_tokens, do_sample, temperature, top_p, seeds,
                              generation_kwargs or {})
    sequences = [encoded.input_ids[i][encoded.attention_mask[i].bool()].tolist() + responses[i]
                 for i in range(len(prompts))]
    prompt_lengths = encoded.lengths
    width = max(len(s) for s in sequences)
    pads = [width - len(s) for s in sequences]
    input_ids = torch.full((len(sequences), width), adapter.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, seq in enumerate(sequences):
        input_ids[i, pads[i]:] = torch.tensor(seq, dtype=torch.long)
        attention_mask[i, pads[i]:] = 1

    queries = [_resolve(query_positions, len(s), "query_positions") if query_positions is not None
               else _default_queries(p, len(s)) for s, p in zip(sequences, prompt_lengths)]
    kept = [_resolve(positions, len(s), "positions") if positions is not None else list(range(len(s)))
            for s in sequences]
    query_index = _padded_index(queries, pads)
    keep_index = _padded_index(kept, pads)

    forward = adapter.forward_inputs(input_ids.to(model.device), attention_mask.to(model.device),
                                     _to(encoded.model_inputs, model.device))
    response_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for i, response in enumerate(responses):
        if response:
            response_mask[i, width - len(response):] = True
    forward = adapter.response_inputs(forward, response_mask.to(model.device))
    if "logits_to_keep" in inspect.signature(model.model.forward).parameters:
        forward["logits_to_keep"] = query_index.to(model.device)
    capture = Capture(adapter, hidden_layers, query_index if attention_layers else None, attention_layers,
                      dtype=dtype, device=device, keep_index=keep_index)
    with capture:
        output = model.model(**forward, use_cache=False)
    logits = output.logits
    if "logits_to_keep" not in forward:
        logits = torch.gather(logits, 1, query_index.to(logits.device)[..., None].expand(-1, -1, logits.shape[-1]))

    traces = []
    for i, seq in enumerate(sequences):
        n_query, n_kept = len(queries[i]), len(kept[i])
        hidden = torch.stack([capture.hidden[l][i, :n_kept] for l in hidden_layers])
        rows = None
        if attention_layers:
            rows = torch.stack([capture.rows[l][i, :, :n_query, pads[i]:] for l in attention_layers])
        segments = encoded.segments[i] + ["response"] * len(responses[i])
        traces.append(Trace(
            tokens=_tokens_table(adapter, seq, segments),
            spans=_spans(encoded.image_spans[i], segments, prompt_lengths[i]),
            hidden=hidden, layers=list(hidden_layers), positions=torch.tensor(kept[i], dtype=torch.long),
            logits=logits[i, :n_query].float().cpu(), query_positions=torch.tensor(queries[i], dtype=torch.long),
            attention=rows.cpu() if rows is not None else None, attention_layers=list(attention_layers),
            prompt_length=prompt_lengths[i],
            meta={"model": model.name, "family": adapter.family, "prompt": prompts[i],
                  "rendered_prompt": rendered[i].text, "images": [_describe(x) for x in _as_list(images[i])],
                  "prefill": prefill, "generate": new_tokens, "do_sample": do_sample, "temperature": temperature,
                  "top_p": top_p, "seed": seeds[i], "system": system, "vlm_lens_version": __version__},
            model=model))
    return traces


# ------------------------------------------------------------------------------------------------- generation
def _generate(model: LensModel, encoded: Encoded, new_tokens: int, do_sample: bool, temperature: float,
              top_p: float, seeds: list[int | None], extra: dict[str, Any]) -> list[list[int]]:
    from transformers import LogitsProcessorList

    adapter = model.adapter
    kwargs: dict[str, Any] = {"max_new_tokens": new_tokens, "do_sample": False,
                              "pad_token_id": adapter.pad_token_id}
    if adapter.placeholder_ids:
        # A generated image placeholder would be replaced by image features in the teacher-forced pass, so the
        # traced sequence would not be the generated one; the placeholder is never a valid answer token.
        kwargs["suppress_tokens"] = adapter.placeholder_ids
    kwargs.update(extra)
    if do_sample:
        # generate(do_sample=True) draws every row from one random stream, so a row's answer would depend on its
        # batch; each row draws from its own generator instead, and greedy decoding emits the drawn token.
        sampler = RowSampler(seeds, temperature, top_p)
        kwargs["logits_processor"] = LogitsProcessorList([*kwargs.get("logits_processor", []), sampler])
    output = model.model.generate(**_to(adapter.generate_inputs(encoded), model.device), **kwargs)
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    new = sequences[:, encoded.input_ids.shape[1]:].tolist()
    eos = adapter.eos_token_ids
    responses = []
    for row in new:
        end = next((k + 1 for k, token in enumerate(row) if token in eos), len(row))
        responses.append(row[:end])
    return responses


def _seeds(seed: int | Sequence[int] | None, n: int) -> list[int]:
    if seed is None:
        return [secrets.randbits(63) for _ in range(n)]
    if isinstance(seed, int) and not isinstance(seed, bool):
        return [seed] * n
    seeds = list(seed)
    if len(seeds) != n or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise VlmLensError(f"seed: expected an int or one int per prompt ({n}), got {seed!r}.")
    return seeds


def _prefilled(prompt: Prompt, prefill: str | None) -> Prompt:
    if not prefill:
        return prompt
    text = prompt.text
    if " ".join(text.split()).lower().endswith(" ".join(prefill.split()).lower()):
        return prompt  # the prompt format already ends with it (e.g. mPLUG-Owl2's "q-align" format)
    return Prompt(text + ("" if text[-1:].isspace() else " ") + prefill, prompt.instruction_spans)


# ------------------------------------------------------------------------------------------------- validation
def _check_generate(generate: int | bool) -> int:
    if generate is True:
        return DEFAULT_NEW_TOKENS
    if generate is False or generate is None:
        return 0
    if not isinstance(generate, int) or generate < 0:
        raise VlmLensError(f"generate={generate!r}: expected a number of new tokens >= 0 (or True for "
                           f"{DEFAULT_NEW_TOKENS}, False for none).")
    return generate


def _check_indices(values: Sequence[int] | None, size: int, name: str, meaning: str) -> list[int]:
    if values is None:
        return list(range(size))
    out = []
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or not -size <= v < size:
            raise VlmLensError(f"{name}: {v!r} is not valid; expected {meaning} (there are {size}; negative "
                               "values count from the end).")
        out.append(v % size)
    if not out:
        raise VlmLensError(f"{name} is empty; pass None for all.")
    return sorted(set(out))


def _attention_layers(attention: bool | Sequence[int], n_layers: int) -> list[int]:
    if attention is True:
        return list(range(n_layers))
    if attention is False or attention is None:
        return []
    return _check_indices(attention, n_layers, "attention", "decoder layer indices 0..n_layers-1")


def _resolve(values: Sequence[int], length: int, name: str) -> list[int]:
    out = []
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or not -length <= v < length:
            raise VlmLensError(f"{name}: {v!r} is out of range for a sequence of {length} positions "
                               f"(valid: {-length}..{length - 1}).")
        out.append(v % length)
    if not out:
        raise VlmLensError(f"{name} is empty; pass None for the default.")
    return out


def _default_queries(prompt_length: int, length: int) -> list[int]:
    return list(range(prompt_length - 1, length))


def _check_length(adapter, encoded: Encoded, new_tokens: int) -> None:
    limit = adapter.max_positions
    if limit is None:
        return
    for i, n in enumerate(encoded.lengths):
        if n + new_tokens > limit:
            raise VlmLensError(f"prompt {i} is {n} positions long (image tokens included){f' + {new_tokens} to generate' if new_tokens else ''}, "
                               f"more than the model's context of {limit}. Shorten the prompt or generate fewer tokens.")


def _images_of(entry: Any, sample: int) -> list:
    return [load_image(image, argument=f"images[{sample}]" + (f"[{k}]" if isinstance(entry, (list, tuple)) else ""))
            for k, image in enumerate(_as_list(entry))]


def _as_list(entry: Any) -> list:
    if entry is None:
        return []
    return list(entry) if isinstance(entry, (list, tuple)) else [entry]


def _describe(image: Any) -> str:
    return str(image) if isinstance(image, str) or hasattr(image, "__fspath__") else type(image).__name__


# ---------------------------------------------------------------------------------------------------- assembly
def _padded_index(per_sample: list[list[int]], pads: list[int]) -> torch.Tensor:
    """``[batch, max_len]`` positions in padded coordinates; short rows repeat their last entry."""
    width = max(len(p) for p in per_sample)
    return torch.tensor([[pad + q for q in p] + [pad + p[-1]] * (width - len(p)) for p, pad in zip(per_sample, pads)],
                        dtype=torch.long)


def _to(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def _tokens_table(adapter, ids: list[int], segments: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"pos": range(len(ids)), "id": ids, "text": adapter.token_texts(ids),
                         "segment": segments})


def _spans(image_spans: list[Span], segments: list[str], prompt_length: int) -> dict[str, Span]:
    spans: dict[str, Span] = {}
    for k, span in enumerate(image_spans):
        spans["image" if k == 0 else f"image_{k}"] = span
    for name in ("instruction", "response"):
        where = [p for p, s in enumerate(segments) if s == name]
        if where:
            spans[name] = Span(where[0], where[-1] + 1)
    spans["prompt"] = Span(0, prompt_length)
    return spans
