"""``trace``: inputs -> (generation) -> one teacher-forced pass with capture -> ``Trace``.

Why one teacher-forced pass after generation, instead of capturing while generating: under causal masking, the
hidden state and attention row at position ``t`` depend only on tokens ``<= t``, so a single forward over
prompt + answer reproduces what each decoding step computed (the tests check it against step-by-step decoding
with the KV cache), at the cost of one forward instead of one capture per step, and with every layer's states
for every position in one place.

Batches are left padded (as ``generate`` needs); position ids count real tokens only, so each sample's Trace equals
the one it gets alone. Every position in a returned Trace is a position of that sample's own, unpadded sequence.

Interventions (``intervene=``, :mod:`vlm_lens.tracing.interventions`) act in every forward: each generation step and
the teacher-forced pass (:mod:`vlm_lens.tracing.editing`), per sample. ``response=`` traces a given answer instead
of generating one, so that one generated answer can be traced under many interventions in one batch.

Example:
    >>> import vlm_lens as vl
    >>> m = vl.load("checkpoints/llava-1.5-7b-hf")                           # doctest: +SKIP
    >>> t = vl.trace(m, "img.jpg", "Rate the quality of this image.", generate=16)  # doctest: +SKIP
    >>> t.answer, t.attention.shape                                          # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import secrets
from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd
import torch

from ..core.checks import as_bool, as_text
from ..core.errors import VlmLensError
from ..core.images import ImageLike
from ..core.sampling import RowSampler
from ..core.spans import Span
from ..core.version import __version__
from ..models.base import Encoded, Prompt
from .editing import Editing, described
from .hooks import Recorder
from .interventions import bind
from .loading import LensModel
from .logit_lens import lens_signature
from .positions import SequenceView
from .record import Trace
from .responses import given_responses
from .settings import Generation, Keep
from .trace_arguments import (
    as_list,
    attention_layers as chosen_attention_layers,
    check_indices,
    check_length,
    default_queries,
    describe_image,
    images_of,
    resolve_indices,
)

__all__ = ["trace"]

ImageEntry = ImageLike | Sequence[ImageLike] | None


@torch.no_grad()
def trace(model: LensModel, image: ImageEntry | Sequence[ImageEntry], prompt: str | Sequence[str], *,
          generate: int | bool | Generation = 0, prefill: str | None = None, system: str | None = None,
          template: bool = True, keep: Keep = Keep(), intervene: Any = None,
          response: Any = None) -> Trace | list[Trace]:
    """Trace one prompt — or, given a list of prompts, a batch in one left-padded forward.

    Args:
        model: A model from :func:`vlm_lens.load` or :func:`vlm_lens.wrap`.
        image: A path, PIL image or array; a list of them for several images in one prompt; None for text only.
            With a list of prompts: one such entry per prompt.
        prompt: The user's question, or a list of questions (a batch). It is formatted with the model's chat
            template; the images come first in the user turn unless the prompt contains the image placeholder (e.g.
            ``<image>``) once per image.
        generate: Generate the answer first, then trace prompt + answer: a number of new tokens (greedy), True
            (32), or a :class:`~vlm_lens.Generation` (sampling, seeds, further ``generate`` arguments). 0: trace
            the prompt only.
        prefill: Text the answer starts with, appended after the chat template's assistant prefix (e.g. Q-Align's
            ``"The quality of the image is"``); it is labelled ``system``, and left out when the rendered prompt
            already ends with it.
        system: A system prompt, where the chat template has a place for it.
        template: False to use each prompt verbatim (it must then contain the image placeholders).
        keep: What the forward keeps (layers, positions, attention rows, dtype/device): a :class:`~vlm_lens.Keep`.
        intervene: Interventions applied to every forward (each generation step and the teacher-forced pass): a
            list of :func:`~vlm_lens.knockout`, :func:`~vlm_lens.ablate`, :func:`~vlm_lens.patch`; with a list of
            prompts, either one list for all or one list (or None) per prompt. The Trace holds the intervened
            states and lists the interventions in ``meta["interventions"]``.
        response: Trace this answer instead of generating one (teacher-forced, labelled ``response``): token ids,
            or a Trace whose answer to take; with a list of prompts, one entry per prompt. Needs ``generate=0``.

    Returns:
        A :class:`~vlm_lens.Trace`, or one per prompt for a list of prompts; each equals the Trace its sample gets
        alone.

    Example:
        >>> t = vl.trace(m, "cat.jpg", "How would you rate the quality of this image?")   # doctest: +SKIP
        >>> t.tokens.segment.value_counts()                                               # doctest: +SKIP
        >>> ts = vl.trace(m, ["a.jpg", "b.jpg"], ["Rate it.", "Rate it."], generate=vl.Generation(8, seed=0),
        ...               keep=vl.Keep(layers=[-1], attention=False))                    # doctest: +SKIP
    """
    if not isinstance(model, LensModel):
        raise VlmLensError(f"model: expected the result of vl.load(...) or vl.wrap(...), got {type(model).__name__}.")
    if not isinstance(keep, Keep):
        raise VlmLensError(f"keep={keep!r}: expected a vl.Keep(...) (layers, positions, query_positions, attention, "
                           "dtype, device).")
    generation = Generation.of(generate)
    prefill, system = as_text(prefill, "prefill"), as_text(system, "system")
    template = as_bool(template, "template")
    if isinstance(prompt, (list, tuple)):
        if not isinstance(image, (list, tuple)) or len(image) != len(prompt):
            raise VlmLensError(f"a list of {len(prompt)} prompts needs a list of as many images (one image, a "
                               f"list of images, or None per prompt); got {type(image).__name__}"
                               f"{f' of length {len(image)}' if isinstance(image, (list, tuple)) else ''}.")
        return _trace_batch(model, list(image), list(prompt), generation, prefill, system, template, keep,
                            intervene, given_responses(model, response, len(prompt), generation))
    return _trace_batch(model, [image], [prompt], generation, prefill, system, template, keep,
                        intervene, given_responses(model, response, None, generation))[0]


@dataclass
class _Prepared:
    """A batch after validation, rendering and encoding (before generation)."""

    prompts: list[str]
    images: list[Any]
    rendered: list[Prompt]
    encoded: Encoded
    seeds: list[int | None]
    hidden_layers: list[int]
    attention_layers: list[int]
    keep: Keep
    interventions: list[list[Any]]
    lens_check: dict[str, Any]


@dataclass
class _Sequences:
    """Prompt + answer of every sample, left padded for the teacher-forced pass."""

    ids: list[list[int]]
    responses: list[list[int]]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pads: list[int]
    queries: list[list[int]]
    kept: list[list[int]]


def _trace_batch(model: LensModel, images: list[Any], prompts: list[str], generation: Generation | None,
                 prefill: str | None, system: str | None, template: bool, keep: Keep, intervene: Any = None,
                 given: list[list[int]] | None = None) -> list[Trace]:
    prepared = _prepare(model, images, prompts, generation, prefill, system, template, keep, intervene)
    applied = None
    if generation is not None:
        responses, applied = _generate(model, prepared, generation)
    else:
        responses = given if given is not None else [[] for _ in prompts]
    sequences = _sequences(model, prepared.encoded, responses, keep)
    recorder, logits, resolved = _forward(model, prepared, sequences)
    samples = range(len(prompts))
    hidden = _split(recorder.hidden, prepared.hidden_layers, [(i, slice(len(sequences.kept[i]))) for i in samples])
    rows: list[torch.Tensor | None] = [None] * len(prompts)
    if prepared.attention_layers:
        rows = list(_split(recorder.rows, prepared.attention_layers,
                           [(i, slice(None), slice(len(sequences.queries[i])), slice(sequences.pads[i], None))
                            for i in samples]))
    traces = [_record(model, prepared, sequences, hidden[i], rows[i], logits, i, generation, prefill, system)
              for i in samples]
    for i, t in enumerate(traces):
        if prepared.interventions[i]:
            t.meta["interventions"] = described(prepared.interventions[i], resolved[i],
                                                None if applied is None else applied[i], len(sequences.ids[i]) - 1)
        if given is not None:
            t.meta["response_given"] = True
    return traces


def _prepare(model: LensModel, images: list[Any], prompts: list[str], generation: Generation | None,
             prefill: str | None, system: str | None, template: bool, keep: Keep, intervene: Any = None) -> _Prepared:
    """Check the arguments, render the prompts and encode the batch (before anything runs on the model)."""
    if len(images) != len(prompts):
        raise VlmLensError(f"{len(images)} image entries for {len(prompts)} prompts; pass one entry (an image, a list "
                           "of images, or None) per prompt.")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise VlmLensError(f"prompts[{i}]: expected a string, got {type(prompt).__name__}.")
    adapter = model.adapter
    n_layers = adapter.n_layers
    hidden_layers = check_indices(keep.layers, n_layers + 1, "keep.layers", "hidden-state indices 0..n_layers")
    attention_layers = chosen_attention_layers(keep.attention, n_layers)
    pictures = [images_of(entry, i) for i, entry in enumerate(images)]
    rendered = [_prefilled(adapter.format_prompt(p, len(pics), system=system, template=template), prefill)
                for p, pics in zip(prompts, pictures)]
    seeds: list[int | None] = [None] * len(prompts)
    if generation is not None and generation.do_sample:
        seeds = list(_seeds(generation.seed, len(prompts)))
    encoded = adapter.encode(pictures, rendered)
    check_length(adapter, encoded, generation.max_new_tokens if generation is not None else 0)
    spans = [_spans(encoded.image_spans[i], encoded.segments[i], n) for i, n in enumerate(encoded.lengths)]
    interventions = bind(intervene, len(prompts), adapter, spans, generation is not None)
    return _Prepared(prompts, images, rendered, encoded, seeds, hidden_layers, attention_layers, keep, interventions,
                     lens_signature(adapter))


def _sequences(model: LensModel, encoded: Encoded, responses: list[list[int]], keep: Keep) -> _Sequences:
    """Prompt + answer per sample, left padded, with the query and kept positions resolved per sample."""
    ids = [encoded.input_ids[i][encoded.attention_mask[i].bool()].tolist() + responses[i]
           for i in range(len(responses))]
    width = max(len(s) for s in ids)
    pads = [width - len(s) for s in ids]
    input_ids = torch.full((len(ids), width), model.adapter.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, seq in enumerate(ids):
        input_ids[i, pads[i]:] = torch.tensor(seq, dtype=torch.long)
        attention_mask[i, pads[i]:] = 1
    queries = [resolve_indices(keep.query_positions, len(s), "keep.query_positions") if keep.query_positions is not None
               else default_queries(p, len(s)) for s, p in zip(ids, encoded.lengths)]
    kept = [resolve_indices(keep.positions, len(s), "keep.positions") if keep.positions is not None
            else list(range(len(s))) for s in ids]
    return _Sequences(ids, responses, input_ids, attention_mask, pads, queries, kept)


def _forward(model: LensModel, prepared: _Prepared, sequences: _Sequences) -> tuple[Recorder, torch.Tensor, list]:
    """The teacher-forced pass with the interventions and the recorder installed: ``(recorder, logits [batch, query,
    vocab], per sample the positions each intervention acted on)``."""
    adapter = model.adapter
    query_index = _padded_index(sequences.queries, sequences.pads)
    keep_index = _padded_index(sequences.kept, sequences.pads)
    forward = adapter.forward_inputs(sequences.input_ids.to(model.device), sequences.attention_mask.to(model.device),
                                     _to(prepared.encoded.model_inputs, model.device))
    width = sequences.input_ids.shape[1]
    response_mask = torch.zeros_like(sequences.input_ids, dtype=torch.bool)
    for i, response in enumerate(sequences.responses):
        if response:
            response_mask[i, width - len(response):] = True
    forward = adapter.response_inputs(forward, response_mask.to(model.device))
    if "logits_to_keep" in inspect.signature(model.model.forward).parameters:
        forward["logits_to_keep"] = query_index.to(model.device)
    recorder = Recorder(adapter, prepared.hidden_layers, query_index if prepared.attention_layers else None,
                        prepared.attention_layers, dtype=prepared.keep.dtype, device=prepared.keep.device,
                        keep_index=keep_index)
    views = [_view(model, prepared, i, ids, response, True)
             for i, (ids, response) in enumerate(zip(sequences.ids, sequences.responses))]
    editing = Editing(adapter, prepared.interventions, views, sequences.pads)
    with editing, recorder:
        output = model.model(**forward, use_cache=False)
    logits = output.logits
    if "logits_to_keep" not in forward:
        logits = torch.gather(logits, 1, query_index.to(logits.device)[..., None].expand(-1, -1, logits.shape[-1]))
    return recorder, logits, editing.resolved


def _split(stored: dict[int, torch.Tensor], keys: list[int], where: list[tuple]) -> list[torch.Tensor]:
    """Per sample ``i``: ``torch.stack([stored[k][where[i]] for k in keys])``, built one key (layer) at a time and
    dropping each stored tensor once it is copied, so that memory peaks at what is kept plus one layer — not at
    twice what is kept, as stacking every sample while the recorder still holds every layer would."""
    out: list[torch.Tensor] = []
    for j, key in enumerate(keys):
        layer = stored.pop(key)
        for i, index in enumerate(where):
            piece = layer[index]
            if j == 0:
                out.append(piece.new_empty((len(keys), *piece.shape)))
            out[i][j] = piece
        del layer
    return out


def _record(model: LensModel, prepared: _Prepared, sequences: _Sequences, hidden: torch.Tensor,
            rows: torch.Tensor | None, logits: torch.Tensor, i: int, generation: Generation | None,
            prefill: str | None, system: str | None) -> Trace:
    """The Trace of sample ``i``: its unpadded positions only (``hidden`` and ``rows`` already cut to them)."""
    adapter = model.adapter
    seq = sequences.ids[i]
    n_query = len(sequences.queries[i])
    prompt_length = prepared.encoded.lengths[i]
    segments = prepared.encoded.segments[i] + ["response"] * len(sequences.responses[i])
    return Trace(
        tokens=_tokens_table(adapter, seq, segments),
        spans=_spans(prepared.encoded.image_spans[i], segments, prompt_length),
        hidden=hidden, layers=list(prepared.hidden_layers),
        positions=torch.tensor(sequences.kept[i], dtype=torch.long),
        logits=logits[i, :n_query].float().cpu(), query_positions=torch.tensor(sequences.queries[i], dtype=torch.long),
        attention=rows.cpu() if rows is not None else None, attention_layers=list(prepared.attention_layers),
        prompt_length=prompt_length,
        meta={"model": model.name, "family": adapter.family, "prompt": prepared.prompts[i],
              "rendered_prompt": prepared.rendered[i].text,
              "images": [describe_image(x) for x in as_list(prepared.images[i])], "prefill": prefill,
              "generate": generation.max_new_tokens if generation is not None else 0,
              "do_sample": bool(generation is not None and generation.do_sample),
              "temperature": generation.temperature if generation is not None else 1.0,
              "top_p": generation.top_p if generation is not None else 1.0, "seed": prepared.seeds[i],
              "system": system, "vlm_lens_version": __version__, "lens_check": dict(prepared.lens_check)},
        model=model)


# ------------------------------------------------------------------------------------------------- generation
def _generate(model: LensModel, prepared: _Prepared, generation: Generation) -> tuple[list[list[int]], list]:
    """The generated answer of every sample (up to and including its end-of-sequence token), and where each
    intervention acted during generation."""
    from transformers import LogitsProcessorList

    adapter, encoded, seeds = model.adapter, prepared.encoded, prepared.seeds
    kwargs: dict[str, Any] = {"max_new_tokens": generation.max_new_tokens, "do_sample": False,
                              "pad_token_id": adapter.pad_token_id}
    if adapter.placeholder_ids:
        # A generated image placeholder would be replaced by image features in the teacher-forced pass, so the
        # traced sequence would not be the generated one; the placeholder is never a valid answer token.
        kwargs["suppress_tokens"] = adapter.placeholder_ids
    suppressed = kwargs.get("suppress_tokens", [])
    kwargs.update(generation.kwargs)
    if isinstance(kwargs.get("suppress_tokens"), (list, tuple)):  # the user's, and still never the placeholder
        kwargs["suppress_tokens"] = sorted({*suppressed, *kwargs["suppress_tokens"]})
    if generation.do_sample:
        # generate(do_sample=True) draws every row from one random stream, so a row's answer would depend on its
        # batch; each row draws from its own generator instead, and greedy decoding emits the drawn token.
        sampler = RowSampler([int(s) for s in seeds if s is not None], generation.temperature, generation.top_p)
        kwargs["logits_processor"] = LogitsProcessorList([*kwargs.get("logits_processor", []), sampler])
    width = encoded.input_ids.shape[1]
    views = [_view(model, prepared, i, encoded.input_ids[i][encoded.attention_mask[i].bool()].tolist(), [], False)
             for i in range(len(encoded.lengths))]
    editing = Editing(adapter, prepared.interventions, views, [width - n for n in encoded.lengths])
    try:
        with editing:
            output = model.model.generate(**_to(adapter.generate_inputs(encoded), model.device), **kwargs)
    except (TypeError, ValueError) as err:
        if not generation.kwargs or isinstance(err, VlmLensError):
            raise
        raise VlmLensError(f"Generation(kwargs={dict(generation.kwargs)!r}): model.generate refused them "
                           f"({' '.join(str(err).split())[:300]}). Check the names and values of these arguments of "
                           "transformers' generate.") from None
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    new = sequences[:, encoded.input_ids.shape[1]:].tolist()
    eos = adapter.eos_token_ids
    responses = []
    for row in new:
        end = next((k + 1 for k, token in enumerate(row) if token in eos), len(row))
        responses.append(row[:end])
    return responses, editing.applied


def _view(model: LensModel, prepared: _Prepared, i: int, ids: list[int], response: list[int],
          complete: bool) -> SequenceView:
    """Sample ``i``'s sequence ``ids`` (prompt + ``response``) as interventions resolve positions on it."""
    encoded = prepared.encoded
    segments = encoded.segments[i] + ["response"] * len(response)
    return SequenceView(tuple(ids), tuple(segments), _spans(encoded.image_spans[i], segments, encoded.lengths[i]),
                        encoded.lengths[i], complete, model)



def _seeds(seed: int | Sequence[int] | None, n: int) -> list[int]:
    if seed is None:
        return [secrets.randbits(63) for _ in range(n)]
    if isinstance(seed, int):
        return [seed] * n
    seeds = list(seed)
    if len(seeds) != n:
        raise VlmLensError(f"Generation(seed=...): {len(seeds)} seeds for {n} prompts; pass one int, or one int per "
                           "prompt.")
    return seeds


def _prefilled(prompt: Prompt, prefill: str | None) -> Prompt:
    if not prefill:
        return prompt
    text = prompt.text
    if " ".join(text.split()).lower().endswith(" ".join(prefill.split()).lower()):
        return prompt  # the prompt format already ends with it (e.g. mPLUG-Owl2's "q-align" format)
    return Prompt(text + ("" if text[-1:].isspace() else " ") + prefill, prompt.instruction_spans)


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
