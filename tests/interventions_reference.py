"""The independent reference of the intervention tests: a plain transformers forward with hand-written hooks.

Nothing of vlm_lens's intervention code runs here. Knockout: the model runs eager attention, and a forward pre-hook
on each knocked attention module adds the float minimum to its additive mask at the (head, query, key) entries the
test lists by hand. Ablation and patching: forward hooks on the decoder layers (a pre-hook on layer 0 for hidden
index 0) return the replaced residual stream. Hidden states are recorded by hooks registered after the replacing
ones, so they show the replaced values, as a Trace must.

Example:
    >>> knock = {0: [(None, [20, 21], list(range(3, 19)))]}                    # doctest: +SKIP
    >>> out = hooked_forward(eager, layers, inputs, knock=knock)               # doctest: +SKIP
    >>> out.logits.shape, out.hidden.shape      # [pos, vocab], [n_layers + 1, pos, d_model]          # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

#: ``layer -> [(heads or None, query positions, key positions), ...]``
Knock = dict[int, list[tuple[Sequence[int] | None, Sequence[int], Sequence[int]]]]


@dataclass
class Forward:
    logits: torch.Tensor  # [pos, vocab] of sample 0
    hidden: torch.Tensor  # [n_layers + 1, pos, d_model] of sample 0
    attentions: list[torch.Tensor] | None  # per layer [head, pos, pos] (eager weights), when asked


def hooked_forward(hf_model: Any, layers: Sequence[torch.nn.Module], inputs: dict[str, Any], *,
                   knock: Knock | None = None, replace: dict[int, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                   attention: Callable[[torch.nn.Module], torch.nn.Module] = lambda layer: layer.self_attn,
                   mask_index: int | None = None, output_attentions: bool = False) -> Forward:
    """One forward of ``hf_model`` on one unpadded sample with hand-edited masks and replaced residual streams.

    Args:
        layers: The decoder layers of ``hf_model``.
        knock: Entries to close in each layer's additive (eager) mask; ``hf_model``'s decoder must run eager.
        replace: ``hidden index -> f(hidden) -> hidden`` (0 = decoder input, ``l`` = output of layer ``l``).
        attention: The attention module of a decoder layer.
        mask_index: Where the attention module takes its mask among its positional arguments (None: the
            ``attention_mask`` keyword).
    """
    recorded: dict[int, torch.Tensor] = {}
    handles = []

    def knocker(entries):
        def hook(module, args, kwargs):
            mask = args[mask_index] if mask_index is not None else kwargs["attention_mask"]
            assert mask is not None and mask.dtype != torch.bool, "the reference edits an eager (additive) mask"
            heads = module.config.num_attention_heads
            edited = mask.expand(mask.shape[0], heads, -1, -1).clone()
            low = torch.finfo(edited.dtype).min
            for chosen, rows, cols in entries:
                for h in (range(heads) if chosen is None else chosen):
                    for r in rows:
                        edited[0, h, r, list(cols)] = low
            if mask_index is not None:
                return (*args[:mask_index], edited, *args[mask_index + 1:]), kwargs
            return args, {**kwargs, "attention_mask": edited}
        return hook

    def input_hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if replace and 0 in replace:
            hidden = replace[0](hidden)
        recorded[0] = hidden.detach().clone()
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def output_hook(index):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if replace and index in replace:
                hidden = replace[index](hidden)
            recorded[index] = hidden.detach().clone()
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
        return hook

    try:
        for layer, entries in (knock or {}).items():
            handles.append(attention(layers[layer]).register_forward_pre_hook(knocker(entries), with_kwargs=True))
        handles.append(layers[0].register_forward_pre_hook(input_hook, with_kwargs=True))
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(output_hook(i + 1)))
        with torch.no_grad():
            out = hf_model(**inputs, output_attentions=output_attentions)
    finally:
        for handle in handles:
            handle.remove()
    hidden = torch.stack([recorded[i][0] for i in range(len(layers) + 1)])
    attentions = [a[0] for a in out.attentions] if output_attentions else None
    return Forward(out.logits[0].float(), hidden.float(), attentions)


def at(positions: Sequence[int], value: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    """A ``replace`` function: rows ``positions`` of sample 0 set to ``value(rows)`` (``[len, d]`` or ``[d]``)."""
    def edit(hidden: torch.Tensor) -> torch.Tensor:
        out = hidden.clone()
        rows = list(positions)
        out[0, rows] = value(hidden[0, rows]).to(hidden.dtype)
        return out
    return edit


def segment_positions(trace, name: str) -> list[int]:
    """Positions labelled ``name`` in a trace, read from its token table."""
    return [int(p) for p in trace.tokens.index[trace.tokens.segment == name]]


def teacher_forced_inputs(m, images: list, trace) -> dict[str, Any]:
    """The processor's own inputs for the trace's rendered prompt, with its answer appended (one sample, unpadded):
    what a transformers user would pass to score that answer."""
    return inputs_with_answer(m, images, trace.meta["rendered_prompt"], trace.response_ids)


def inputs_with_answer(m, images: list, rendered: str, answer: Sequence[int]) -> dict[str, Any]:
    """Processor inputs of ``rendered`` (one sample) with ``answer`` token ids appended."""
    inputs = dict(m.processor(images=m.adapter.processor_images([list(images)]), text=[rendered],
                              return_tensors="pt"))
    inputs.pop("labels", None)
    tail = torch.tensor([list(answer)], dtype=torch.long)
    n = tail.shape[1]
    fill = {"input_ids": tail, "attention_mask": torch.ones(1, n, dtype=torch.long),
            "token_type_ids": torch.ones(1, n, dtype=torch.long),      # PaliGemma: the answer is the causal suffix
            "mm_token_type_ids": torch.zeros(1, n, dtype=torch.long)}  # Qwen2-VL: answer tokens are text
    for name, extra in fill.items():
        if name in inputs and n:
            inputs[name] = torch.cat([inputs[name], extra.to(inputs[name].dtype)], dim=1)
    return inputs


def greedy_without_cache(m, hf_model: Any, layers: Sequence[torch.nn.Module], inputs_for: Callable, steps: int,
                         knock_for: Callable, **forward: Any) -> tuple[list[int], torch.Tensor]:
    """Greedy decoding by full forwards of ``hf_model`` (no KV cache), the masks edited by hand at every step.

    Args:
        inputs_for: ``answer ids so far -> model inputs`` of prompt + answer.
        knock_for: ``answer ids so far -> knock`` (see :func:`hooked_forward`).
        forward: Further arguments of :func:`hooked_forward` (``attention``, ``mask_index``).

    Returns:
        The answer (up to and including an end-of-sequence token) and ``[step, vocab]`` logits of each step.
    """
    answer, logits = [], []
    for _ in range(steps):
        out = hooked_forward(hf_model, layers, inputs_for(answer), knock=knock_for(answer), **forward)
        logits.append(out.logits[-1])
        last = out.logits[-1].clone()
        last[m.adapter.placeholder_ids] = float("-inf")
        answer.append(int(last.argmax()))
        if answer[-1] in m.adapter.eos_token_ids:
            break
    return answer, torch.stack(logits)
