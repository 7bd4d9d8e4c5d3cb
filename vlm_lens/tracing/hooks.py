"""Hooks and the attention backend: what one traced forward records, installed and always removed.

Two mechanisms, both scoped to a ``with Recorder(...)`` block:

1. **Residual stream.** A forward pre-hook on decoder layer 0 records the vectors entering the decoder (index 0:
   text embeddings with the image embeddings spliced in, after any family-specific scaling), and a forward hook on
   each decoder layer records its raw output (index ``i``: output of layer ``i``, *before* the final norm).
   Decoder layers of transformers v5 return a tensor; older and remote code return tuples — both are handled.

2. **Attention rows without eager attention.** For the duration of the block, the decoder's config is switched to
   an attention implementation registered under :data:`IMPLEMENTATION`. It returns exactly the output of the
   implementation the model was running (``sdpa``, ``flash_attention_2``, ...), so the forward is bit-identical,
   and on the side computes ``softmax(q_sel . k^T * scale + mask)`` for the selected query rows only: grouped-query
   keys expanded per head, the causal mask rebuilt where SDPA was given none, soft-capping applied where the
   family uses it. The queries and keys arrive after rotary embedding, so no family needs RoPE code of its own.
   Models already running eager attention are read through a hook on the attention module's weights instead.

The same attention function is where knockouts act (:mod:`vlm_lens.tracing.editing` registers an editor per
attention module with :func:`add_editor`): the mask it is given is edited before the delegate runs, and the rows
are computed from the edited mask. The config switch is shared and counted, so a recorder and an editor active
together switch it once.

What the hooks store leaves the GPU without stalling it: hidden states kept on the host (``device="cpu"``) are
copied asynchronously into pinned memory as each layer finishes, and waited for once when the block ends (a
synchronous copy per layer would make the host wait for every layer before it can queue the next one). The
values are those of a plain copy, bit for bit (``benchmarks/gpu.py`` checks it on a GPU).

The registration in transformers' ``AttentionInterface`` / ``AttentionMaskInterface`` and the config switch are
undone on exit, errors included. Nothing here runs at import time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..models.base import Adapter

__all__ = ["IMPLEMENTATION", "Recorder", "add_editor", "attention_rows", "base_implementation", "full_mask",
           "remove_editors", "restore", "switch"]

#: Name under which the row-recording attention function is registered while a capture is active.
IMPLEMENTATION = "vlm_lens_rows"

_lock = threading.RLock()
_active: dict[int, tuple["Recorder", int]] = {}  # id(attention module) -> (capture, decoder layer index)
_registered: dict[str, int] = {}  # registered implementation name -> number of active captures using it
_editors: dict[int, tuple[Any, int]] = {}  # id(attention module) -> (mask editor, decoder layer index)
_switches: dict[int, list] = {}  # id(config) -> [config, base implementation, number of users]


@dataclass
class Recorder:
    """Record hidden states and attention rows during forwards run inside the ``with`` block.

    Args:
        adapter: The family adapter (decoder layers, attention modules, config).
        layers: Hidden-state indices to keep (0 = decoder input, ``i`` = output of decoder layer ``i``).
        query_positions: ``[batch, query]`` positions whose attention rows are computed; None for no rows.
        attention_layers: Decoder layer indices (0-based) whose rows are computed.
        dtype: dtype of the stored hidden states (None: as computed).
        device: device of the stored hidden states (None: where computed).
        keep_index: ``[batch, kept]`` positions whose hidden states are stored; None for all.

    After the block, ``hidden[i]`` is ``[batch, pos, d_model]`` (``pos`` = the kept positions) and ``rows[l]`` is
    ``[batch, head, query, key]`` (float32) for the last forward that ran.
    """

    adapter: Adapter
    layers: list[int]
    query_positions: torch.Tensor | None = None
    attention_layers: list[int] = field(default_factory=list)
    dtype: torch.dtype | None = None
    device: torch.device | str | None = None
    keep_index: torch.Tensor | None = None
    hidden: dict[int, torch.Tensor] = field(default_factory=dict, init=False)
    rows: dict[int, torch.Tensor] = field(default_factory=dict, init=False)
    _handles: list[Any] = field(default_factory=list, init=False, repr=False)
    _switched: tuple[Any, str] | None = field(default=None, init=False, repr=False)
    _placed: dict[tuple[int, torch.device], torch.Tensor] = field(default_factory=dict, init=False, repr=False)
    _copying: set[torch.device] = field(default_factory=set, init=False, repr=False)

    # ------------------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Recorder":
        try:
            self._install()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._remove()
        finally:
            self._wait()

    def _install(self) -> None:
        layers = self.adapter.layers
        wanted = set(self.layers)
        if 0 in wanted:
            self._handles.append(layers[0].register_forward_pre_hook(self._record_input, with_kwargs=True))
        for i, layer in enumerate(layers):
            if i + 1 in wanted:
                self._handles.append(layer.register_forward_hook(self._make_output_hook(i + 1)))
        if self.query_positions is None or not self.attention_layers:
            return
        config = self.adapter.text_config
        base = base_implementation(config)
        if base == "eager":
            for l in self.attention_layers:
                module = self.adapter.attention_module(layers[l])
                self._handles.append(module.register_forward_hook(self._make_eager_hook(l)))
            return
        with _lock:
            for l in self.attention_layers:
                _active[id(self.adapter.attention_module(layers[l]))] = (self, l)
        switch(config)
        self._switched = (config, base)

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        with _lock:
            for key in [k for k, (capture, _) in _active.items() if capture is self]:
                del _active[key]
        if self._switched is not None:
            restore(self._switched[0])
            self._switched = None
        self._placed.clear()

    def _wait(self) -> None:
        """Wait for the asynchronous copies to the host: after this, every stored tensor holds its values."""
        for device in self._copying:
            torch.cuda.current_stream(device).synchronize()
        self._copying.clear()

    # ---------------------------------------------------------------------------------------------- recording
    def _keep(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        if self.keep_index is not None:
            index = self._on(self.keep_index, tensor.device)
            tensor = torch.gather(tensor, 1, index[..., None].expand(-1, -1, tensor.shape[-1]))
        if self.dtype is not None:
            tensor = tensor.to(self.dtype)  # where it was computed: a GPU casts faster than the host
        if self.device is None:
            return tensor
        target = torch.device(self.device)
        if target.type == "cpu" and tensor.device.type == "cuda":
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)  # stream-ordered; read only after _wait()
            self._copying.add(tensor.device)
            return host
        return tensor.to(target)

    def _on(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``tensor`` on ``device``, moved there once per block instead of once per layer."""
        key = (id(tensor), device)
        if key not in self._placed:
            self._placed[key] = tensor.to(device)
        return self._placed[key]

    def _record_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        self.hidden[0] = self._keep(hidden)

    def _make_output_hook(self, index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            self.hidden[index] = self._keep(hidden)

        return hook

    def _make_eager_hook(self, layer: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
            if weights is None:
                raise RuntimeError(f"decoder layer {layer}: eager attention returned no weights")
            self.rows[layer] = _gather_rows(weights.float(), self._on(self.query_positions, weights.device))

        return hook

    def record_rows(self, layer: int, module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None, kwargs: dict) -> None:
        self.rows[layer] = attention_rows(module, query, key, attention_mask,
                                          self._on(self.query_positions, query.device), scaling, kwargs)


# ------------------------------------------------------------------------------------------ the attention function
def attention_rows(module: nn.Module, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
                   positions: torch.Tensor, scaling: float | None, kwargs: dict) -> torch.Tensor:
    """Attention probabilities of selected query rows, exactly as eager attention computes them.

    Args:
        module: The attention module (for ``num_key_value_groups`` and ``is_causal``).
        query: ``[batch, head, q, head_dim]`` after rotary embedding.
        key: ``[batch, kv_head, kv, head_dim]`` after rotary embedding (and the cache update).
        attention_mask: The mask the model built for this layer: None (causal left to the kernel), boolean
            ``[b, 1|head, q, kv]`` (True = attend), additive float, or a 2-D ``[b, kv]`` padding mask.
        positions: ``[batch, query]`` indices into the ``q`` axis.
        scaling: Score scale (None: ``head_dim ** -0.5``).
        kwargs: The remaining keyword arguments the model passed (``softcap``, ``sliding_window``...).

    Returns:
        ``[batch, head, query, kv]`` float32 probabilities; masked keys are exactly 0.
    """
    batch, heads, q_len, dim = query.shape
    kv_len = key.shape[2]
    groups = heads // key.shape[1]
    scale = dim ** -0.5 if scaling is None else scaling
    q_sel = torch.gather(query, 2, positions[:, None, :, None].expand(batch, heads, -1, dim)).float()
    keys = key.float()
    if groups > 1:
        keys = keys.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q_sel, keys.transpose(-1, -2)) * scale
    softcap = kwargs.get("softcap")
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    allowed = _allowed(module, attention_mask, positions, batch, q_len, kv_len, kwargs, scores.device)
    if allowed is not None:
        if allowed.dtype == torch.bool:
            scores = scores.masked_fill(~allowed, float("-inf"))
        else:
            scores = scores + allowed.float()
    return torch.softmax(scores, dim=-1)


def _allowed(module: nn.Module, mask: torch.Tensor | None, positions: torch.Tensor, batch: int, q_len: int,
             kv_len: int, kwargs: dict, device: torch.device) -> torch.Tensor | None:
    """The mask rows for ``positions``: boolean (True = attend) or additive float, broadcastable to scores."""
    if mask is not None and mask.ndim == 4:
        rows = mask.expand(batch, -1, -1, -1) if mask.shape[0] == 1 else mask
        index = positions[:, None, :, None].expand(batch, rows.shape[1], -1, kv_len)
        return torch.gather(rows[..., :kv_len], 2, index)
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal
    allowed = None
    if causal:
        key_pos = torch.arange(kv_len, device=device)
        query_pos = positions.to(device) + (kv_len - q_len)  # queries are the last q_len of the kv positions
        allowed = key_pos[None, None, :] <= query_pos[:, :, None]
        window = kwargs.get("sliding_window")
        if window:
            allowed &= key_pos[None, None, :] > query_pos[:, :, None] - window
        allowed = allowed[:, None]
    if mask is not None and mask.ndim == 2:  # flash-style padding mask [batch, kv]
        padding = mask[:, None, None, -kv_len:].bool()
        allowed = padding if allowed is None else allowed & padding
    return allowed


def _gather_rows(weights: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    batch, heads, _, kv_len = weights.shape
    return torch.gather(weights, 2, positions[:, None, :, None].expand(batch, heads, -1, kv_len))


def _make_function(base: str) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    fixed = None if base == "eager" else ALL_ATTENTION_FUNCTIONS[base]
    # an edited mask is an arbitrary one: kernels that take none (flash) hand the edited layers to SDPA
    masked = fixed if base == "sdpa" else None if base == "eager" else ALL_ATTENTION_FUNCTIONS["sdpa"]

    def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        delegate = fixed or _eager_of(module)  # eager is each family's own function, not a registered one
        run = delegate
        editor = _editors.get(id(module))
        if editor is not None:
            edited = editor[0].edit_mask(editor[1], module, query, key, attention_mask, kwargs,
                                         additive=base == "eager")
            if edited is not None:
                attention_mask, run = edited, masked or delegate
        output, weights = run(module, query, key, value, attention_mask, *args, **kwargs)
        entry = _active.get(id(module))
        if entry is not None:
            capture, layer = entry
            scaling = kwargs.get("scaling", args[1] if len(args) > 1 else None)
            capture.record_rows(layer, module, query, key, attention_mask, scaling, kwargs)
        return output, weights

    return attention


def full_mask(module: nn.Module, mask: torch.Tensor | None, batch: int, q_len: int, kv_len: int, kwargs: dict,
              device: torch.device) -> torch.Tensor:
    """The whole mask of one attention call, ``[batch, 1|head, q, kv]``: boolean (True = attend) or additive float,
    rebuilt (causal, sliding window, padding) where the model passed none or a 2-D padding mask."""
    if mask is not None and mask.ndim == 4:
        return mask[..., :kv_len].expand(batch, -1, -1, -1)
    positions = torch.arange(q_len, device=device).expand(batch, q_len)
    allowed = _allowed(module, mask, positions, batch, q_len, kv_len, kwargs, device)
    return torch.ones(batch, 1, q_len, kv_len, dtype=torch.bool, device=device) if allowed is None else \
        allowed.expand(batch, -1, -1, -1)


def base_implementation(config: Any) -> str:
    """The attention implementation the model runs with, whether or not vlm_lens has switched it."""
    name = config._attn_implementation
    return name[len(IMPLEMENTATION) + 1:] if name.startswith(f"{IMPLEMENTATION}:") else name


def switch(config: Any) -> None:
    """Route the decoder's attention through vlm_lens's function (counted: the last :func:`restore` undoes it)."""
    with _lock:
        entry = _switches.get(id(config))
        if entry is None:
            base = config._attn_implementation
            _register(base)
            entry = _switches[id(config)] = [config, base, 0]
            config._attn_implementation_internal = f"{IMPLEMENTATION}:{base}"
        entry[2] += 1


def restore(config: Any) -> None:
    """Undo one :func:`switch`."""
    with _lock:
        entry = _switches[id(config)]
        entry[2] -= 1
        if entry[2] == 0:
            del _switches[id(config)]
            config._attn_implementation_internal = entry[1]
            _unregister(entry[1])


def add_editor(module: nn.Module, editor: Any, layer: int) -> None:
    """Let ``editor.edit_mask(layer, module, query, key, mask, kwargs, additive=...)`` edit ``module``'s mask
    (it returns the edited mask, or None to leave it as it is)."""
    with _lock:
        _editors[id(module)] = (editor, layer)


def remove_editors(editor: Any) -> None:
    with _lock:
        for key in [k for k, (e, _) in _editors.items() if e is editor]:
            del _editors[key]


def _eager_of(module: nn.Module) -> Callable:
    """The eager attention function of ``module``'s family: the ``eager_attention_forward`` of the module that
    defines its class (every transformers family and vlm_lens's mPLUG-Owl2 port have one), else LLaMA's."""
    import sys

    found = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if found is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as found
    return found


def _register(base: str) -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = f"{IMPLEMENTATION}:{base}"
    with _lock:
        if _registered.get(name, 0) == 0:
            ALL_ATTENTION_FUNCTIONS.register(name, _make_function(base))
            ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
        _registered[name] = _registered.get(name, 0) + 1


def _unregister(base: str) -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = f"{IMPLEMENTATION}:{base}"
    with _lock:
        _registered[name] -= 1
        if _registered[name] == 0:
            del _registered[name]
            for interface in (ALL_ATTENTION_FUNCTIONS, ALL_MASK_ATTENTION_FUNCTIONS):
                interface._global_mapping.pop(name, None)
                interface._local_mapping.pop(name, None)
