"""``Trace``: everything one traced forward recorded for one sample, with its shapes checked.

Shapes use one vocabulary across vlm_lens: ``layer, pos, head, query, key, d_model, vocab``. A Trace holds tensors
and tables only; computing them is :mod:`vlm_lens.tracing.tracer`'s job and drawing them :mod:`vlm_lens.plot`'s.
The logit lens needs the model's final norm and output head, so a Trace keeps a reference to the model it came
from; a Trace read back with :meth:`Trace.load` gets one only if a model is passed.

Conveniences that belong to upper layers — ``t.plot`` (figures), ``t.report(...)`` (the HTML page),
``t.quality()`` and ``t.attention_mass()`` (BIQA readings) — are not defined here: the layer that owns each
registers it with :func:`register_trace_accessor` / :func:`register_trace_method` when it is imported (as pandas
registers ``DataFrame`` accessors), so this module imports nothing above it. ``import vlm_lens`` registers them
all.

Saved traces are a folder: ``tensors.safetensors`` (hidden states, logits, attention rows), ``tokens.parquet``
and ``trace.json`` (spans, layer indices, metadata). No pickle.

Example:
    >>> t = vl.trace(m, "cat.jpg", "How would you rate the quality of this image?")   # doctest: +SKIP
    >>> t.hidden.shape            # [layer, pos, d_model]                              # doctest: +SKIP
    >>> t.lens(topk=4).head()     # layer, pos, rank, token_id, token, prob            # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from safetensors.torch import save_file

from ..core.checks import is_integer, make_folder
from ..core.errors import VlmLensError
from ..core.spans import SEGMENTS, Span
from .lens import Lens
from .loading import LensModel
from .logit_lens import resolve_lens, target_token_ids
from .trace_checks import FORMAT_VERSION, check_model, order_problems, read_saved

__all__ = ["Trace", "register_trace_accessor", "register_trace_method"]


@dataclass
class Trace:
    """The record of one sample.

    Attributes:
        tokens: One row per position: ``pos`` (int), ``id`` (token id), ``text`` (the token decoded on its own),
            ``segment`` (one of ``system``, ``image``, ``instruction``, ``response``).
        spans: Named spans: ``"image"`` (first image; further images ``"image_1"``, ...), ``"instruction"`` (from
            the first to the last instruction token), ``"prompt"``, and ``"response"`` when generated. Image spans
            carry their patch ``grid`` and ``layout`` when spatial.
        hidden: ``[layer, pos, d_model]`` residual stream; ``layers[i]`` says which: 0 = decoder input
            (embeddings with the image spliced in), ``l`` = output of decoder layer ``l`` (before the final norm).
        layers: Hidden-state index of each row of ``hidden``.
        positions: ``[pos]`` sequence position of each column of ``hidden`` (all positions by default).
        logits: ``[query, vocab]`` float32 final logits of the model at ``query_positions``.
        query_positions: ``[query]`` positions whose attention rows and logits were kept.
        attention: ``[layer, head, query, key]`` float32 attention probabilities of the query positions over all
            ``key`` positions (keys = the whole sequence), or None; row ``i`` is decoder layer
            ``attention_layers[i]`` (0-based: its output is hidden index ``attention_layers[i] + 1``).
        attention_layers: Decoder layer (0-based module index, as ``Keep(attention=[...])`` takes it) of each row
            of ``attention``. Tables and figures number these rows by :attr:`attention_blocks` instead.
        prompt_length: Number of prompt positions; positions from there on are the response.
        meta: Where the trace came from (model name, family, prompt, generation settings).
    """

    tokens: pd.DataFrame
    spans: dict[str, Span]
    hidden: torch.Tensor
    layers: list[int]
    positions: torch.Tensor
    logits: torch.Tensor
    query_positions: torch.Tensor
    attention: torch.Tensor | None
    attention_layers: list[int]
    prompt_length: int
    meta: dict[str, Any] = field(default_factory=dict)
    model: LensModel | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        n_pos = len(self.tokens)
        problems = []
        if list(self.tokens.columns[:4]) != ["pos", "id", "text", "segment"]:
            problems.append(f"tokens columns {list(self.tokens.columns)} must start with pos, id, text, segment")
        elif not set(self.tokens["segment"]).issubset(SEGMENTS):
            problems.append(f"unknown segments {set(self.tokens['segment']) - set(SEGMENTS)}")
        if self.hidden.ndim != 3 or self.hidden.shape[:2] != (len(self.layers), len(self.positions)):
            problems.append(f"hidden {tuple(self.hidden.shape)} must be [layer={len(self.layers)}, "
                            f"pos={len(self.positions)}, d_model]")
        n_query = len(self.query_positions)
        if self.logits.ndim != 2 or self.logits.shape[0] != n_query:
            problems.append(f"logits {tuple(self.logits.shape)} must be [query={n_query}, vocab]")
        if self.attention is not None:
            shape = tuple(self.attention.shape)
            if len(shape) != 4 or (shape[0], shape[2], shape[3]) != (len(self.attention_layers), n_query, n_pos):
                problems.append(f"attention {shape} must be [layer={len(self.attention_layers)}, head, "
                                f"query={n_query}, key={n_pos}]")
        if len(self.positions) and (int(self.positions.max()) >= n_pos or int(self.positions.min()) < 0):
            problems.append(f"positions outside [0, {n_pos})")
        problems += order_problems(self, n_pos)
        if problems:
            raise VlmLensError("inconsistent Trace: " + "; ".join(problems))

    # ------------------------------------------------------------------------------------------------- reading
    @property
    def ids(self) -> torch.Tensor:
        """``[pos]`` token ids of the whole sequence."""
        return torch.as_tensor(self.tokens["id"].to_numpy())

    @property
    def response_ids(self) -> list[int]:
        return self.tokens["id"].iloc[self.prompt_length:].tolist()

    @property
    def answer(self) -> str:
        """The generated response as text (special tokens dropped); empty when nothing was generated."""
        if self.model is None:
            return "".join(self.tokens["text"].iloc[self.prompt_length:])
        return self.model.adapter.tokenizer.decode(self.response_ids, skip_special_tokens=True).strip()

    @property
    def attention_blocks(self) -> list[int]:
        """The layer number of each row of ``attention`` as every table and figure shows it: decoder block ``l``
        (1 = the first), the block whose output is hidden index ``l`` of :attr:`layers` — so attention and logit
        lens of the same layer number line up. Equal to ``[l + 1 for l in attention_layers]``."""
        return [int(l) + 1 for l in self.attention_layers]

    @property
    def image_spans(self) -> list[Span]:
        return [span for span in self.spans.values() if span.image_index is not None]

    def hidden_at(self, positions: Sequence[int] | None = None, layers: Sequence[int] | None = None) -> torch.Tensor:
        """``[layer, pos, d_model]`` hidden states at sequence ``positions`` for hidden indices ``layers``."""
        rows = self._layer_rows(layers)
        cols = self._position_cols(positions)
        return self.hidden[rows][:, cols]

    # ----------------------------------------------------------------------------------------------------- lens
    def lens(self, topk: int = 4, *, layers: Sequence[int] | None = None,
             positions: Sequence[int] | None = None, lens: "Lens | None" = None) -> pd.DataFrame:
        """Lens top-``k`` per layer and position (the logit lens, or the lens given).

        Args:
            topk: Number of candidates per (layer, position).
            layers: Hidden-state indices (default: all kept); 0 is the decoder input.
            positions: Sequence positions (default: the query positions).
            lens: None for the logit lens, or a lens of this trace's model (e.g. a
                :class:`~vlm_lens.tracing.tuned_lens.TunedLens`).

        Returns:
            DataFrame with columns ``layer, pos, rank, token_id, token, prob`` (rank 1 = most probable).

        Example:
            >>> t.lens(topk=4, positions=[-1]).query("rank == 1")  # doctest: +SKIP
        """
        layers = list(self.layers) if layers is None else list(layers)
        reader, tokenizer = self._lens(lens, layers)
        positions = self._default_positions(positions)
        probs, ids = reader.topk(self.hidden_at(positions, layers), topk, layers=layers)
        n_layer, n_pos = len(layers), len(positions)
        texts = self.model.adapter.token_texts(ids.reshape(-1).tolist())
        return pd.DataFrame({
            "layer": torch.tensor(layers).repeat_interleave(n_pos * topk).numpy(),
            "pos": torch.tensor(positions).repeat_interleave(topk).repeat(n_layer).numpy(),
            "rank": torch.arange(1, topk + 1).repeat(n_layer * n_pos).numpy(),
            "token_id": ids.reshape(-1).numpy(),
            "token": texts,
            "prob": probs.reshape(-1).numpy(),
        })

    def lens_targets(self, targets: Sequence[str | int], *, layers: Sequence[int] | None = None,
                     positions: Sequence[int] | None = None, lens: "Lens | None" = None) -> pd.DataFrame:
        """Probability and rank of chosen words at every layer (e.g. the five IQA level words), read through the
        logit lens or ``lens`` (as :meth:`lens`).

        Returns:
            DataFrame with columns ``layer, pos, target, token_id, prob, rank`` (rank 1 = most probable).

        Example:
            >>> t.lens_targets(["excellent", "good", "fair", "poor", "bad"], positions=[-1])  # doctest: +SKIP
        """
        layers = list(self.layers) if layers is None else list(layers)
        reader, tokenizer = self._lens(lens, layers)
        token_ids = target_token_ids(tokenizer, targets)
        positions = self._default_positions(positions)
        probs, ranks = reader.targets(self.hidden_at(positions, layers), token_ids, layers=layers)
        n_layer, n_pos, n_target = len(layers), len(positions), len(token_ids)
        return pd.DataFrame({
            "layer": torch.tensor(layers).repeat_interleave(n_pos * n_target).numpy(),
            "pos": torch.tensor(positions).repeat_interleave(n_target).repeat(n_layer).numpy(),
            "target": [str(t) for t in targets] * (n_layer * n_pos),
            "token_id": token_ids * (n_layer * n_pos),
            "prob": probs.reshape(-1).numpy(),
            "rank": ranks.reshape(-1).numpy(),
        })

    # ----------------------------------------------------------------------------------------------- save/load
    def save(self, path: str | Path) -> Path:
        """Write the trace to folder ``path`` (safetensors + parquet + json). Returns the folder.

        Raises:
            VlmLensError: ``path`` is a file, or cannot be created or written.
        """
        folder = make_folder(path, "path")
        tensors = {"hidden": self.hidden, "positions": self.positions, "logits": self.logits,
                   "query_positions": self.query_positions}
        if self.attention is not None:
            tensors["attention"] = self.attention
        info = {"format_version": FORMAT_VERSION, "layers": list(self.layers),
                "attention_layers": list(self.attention_layers), "prompt_length": self.prompt_length,
                "spans": {name: span.to_dict() for name, span in self.spans.items()}, "meta": self.meta}
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                      str(folder / "tensors.safetensors"))
            self.tokens.to_parquet(folder / "tokens.parquet", index=False)
            (folder / "trace.json").write_text(json.dumps(info, indent=1, default=str))
        except OSError as err:
            raise VlmLensError(f"path={str(folder)!r}: the trace could not be written ({err.strerror or err}). Pass a "
                               "folder you can write to, on a disk with space.") from None
        return folder

    @classmethod
    def load(cls, path: str | Path, model: LensModel | None = None) -> "Trace":
        """Read a trace written by :meth:`save`; pass ``model`` to use the logit lens on it.

        Raises:
            DamagedFileError: A file of the folder cannot be read, or its values contradict each other (the
                message names the file and what is wrong).
            VlmLensError: ``model`` is not the model the trace was recorded with (another vocabulary, size, output
                head or final norm): its lens would decode these hidden states with another model's head.
        """
        folder = Path(path)
        missing = [n for n in ("tensors.safetensors", "tokens.parquet", "trace.json") if not (folder / n).is_file()]
        if missing:
            raise VlmLensError(f"{str(folder)!r} is not a saved trace: missing {', '.join(missing)}.")
        if model is not None and not isinstance(model, LensModel):
            raise VlmLensError(f"model: expected the result of vl.load(...) or vl.wrap(...) (or None), got "
                               f"{type(model).__name__}.")
        trace = read_saved(cls, folder)
        if model is not None:
            check_model(trace, model, folder)
            trace.model = model
        return trace

    # ------------------------------------------------------------------------------------------------ helpers
    def _lens(self, lens: "Lens | None" = None, layers: Sequence[int] | None = None) -> tuple["Lens", Any]:
        """The lens to read ``layers`` with (checked against this trace's model), and the tokenizer."""
        if self.model is None:
            raise VlmLensError("this Trace has no model attached (it was loaded from disk); the lens needs "
                               "the model's final norm and output head: Trace.load(path, model=vl.load(...)).")
        self._layer_rows(layers)  # layers the trace did not keep are said first
        return resolve_lens(lens, self.model, layers), self.model.adapter.tokenizer

    def _default_positions(self, positions: Sequence[int] | None) -> list[int]:
        if positions is None:
            return self.query_positions.tolist()
        return [self._resolve_position(p) for p in positions]

    def _resolve_position(self, p: int) -> int:
        n = len(self.tokens)
        if not is_integer(p):
            raise VlmLensError(f"positions: expected integers, got {p!r}.")
        p = int(p)
        if not -n <= p < n:
            raise VlmLensError(f"position {p} is out of range for a sequence of {n} positions "
                               f"(valid: {-n}..{n - 1}).")
        return p % n

    def _position_cols(self, positions: Sequence[int] | None) -> torch.Tensor:
        if positions is None:
            return torch.arange(len(self.positions))
        kept = {int(p): i for i, p in enumerate(self.positions.tolist())}
        cols, missing = [], []
        for p in positions:
            p = self._resolve_position(p)
            (cols.append(kept[p]) if p in kept else missing.append(p))
        if missing:
            raise VlmLensError(f"positions {missing} were not kept by this trace (it kept "
                               f"{len(kept)} positions); trace again with positions=None (all) or including them.")
        return torch.tensor(cols, dtype=torch.long)

    def _layer_rows(self, layers: Sequence[int] | None) -> torch.Tensor:
        if layers is None:
            return torch.arange(len(self.layers))
        index = {l: i for i, l in enumerate(self.layers)}
        missing = [l for l in layers if l not in index]
        if missing:
            raise VlmLensError(f"layers {missing} were not kept (kept hidden indices: {self.layers}).")
        return torch.tensor([index[l] for l in layers], dtype=torch.long)

    def __repr__(self) -> str:
        counts = self.tokens["segment"].value_counts().to_dict()
        return (f"Trace(positions={len(self.tokens)}, segments={counts}, hidden={tuple(self.hidden.shape)}, "
                f"attention={None if self.attention is None else tuple(self.attention.shape)}, "
                f"query_positions={self.query_positions.tolist()[:8]}{'...' if len(self.query_positions) > 8 else ''})")


# --------------------------------------------------------------------------------------------------- extensions
_EXTENSIONS: dict[str, str] = {}  # attribute name -> module that registered it


def register_trace_method(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """Make ``function(trace, ...)`` available as ``trace.<name>(...)`` (with its own signature and docstring).

    Upper layers call this for the conveniences they own (``vlm_lens.report`` registers ``report``). Registering
    the same function again is a no-op; a name already taken by something else is refused.

    Example:
        >>> import vlm_lens as vl
        >>> vl.Trace.report.__module__          # registered by the report layer
        'vlm_lens.report.html'
    """
    _register(name, function, function)
    return function


def register_trace_accessor(name: str, accessor: type) -> type:
    """Make ``trace.<name>`` return ``accessor(trace)`` (e.g. ``t.plot.latent_output()``)."""
    _register(name, property(accessor, doc=accessor.__doc__), accessor)
    return accessor


def _register(name: str, attribute: Any, owner: Any) -> None:
    module = getattr(owner, "__module__", "?")
    if name in _EXTENSIONS:
        if _EXTENSIONS[name] != module:
            raise ValueError(f"Trace.{name} is already registered by {_EXTENSIONS[name]}; {module} cannot take it.")
    elif hasattr(Trace, name):
        raise ValueError(f"Trace.{name} already exists; an extension must take a new name.")
    _EXTENSIONS[name] = module
    setattr(Trace, name, attribute)
