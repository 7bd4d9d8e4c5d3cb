"""The lens interface: what every lens gives the readers of vlm_lens, and how a reader picks one (``lens=``).

A *lens* maps the residual stream at hidden index ``l`` (what ``Trace.hidden`` holds: 0 = decoder input, ``l`` =
output of decoder block ``l``, before the final norm) to logits over the vocabulary. Two lenses implement it:

- the **logit lens** (:class:`~vlm_lens.tracing.logit_lens.LogitLens`): the model's own final norm and output head,
  the same for every layer;
- the **tuned lens** (:class:`~vlm_lens.tracing.tuned_lens.TunedLens`): one affine translator per hidden index in
  front of that norm and head, fitted so that each layer's reading is close to the model's output.

Every reader of the lens (``Trace.lens``, ``Trace.lens_targets``, the lens figures, the BIQA readings, the report,
the command line) takes ``lens=``: None for the logit lens, or a lens object, checked by
:func:`~vlm_lens.tracing.logit_lens.resolve_lens` against the model and the layers it is asked to read before anything
is computed. The shared work — decoding rows in chunks
under a byte budget, keeping only the top-k or the requested targets — is written once, here.

Example:
    >>> import tempfile, vlm_lens as vl
    >>> from vlm_lens.testing import tiny_llava
    >>> m = vl.load(tiny_llava(tempfile.mkdtemp(), layers=2))
    >>> isinstance(vl.TunedLens(m), Lens)
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Sequence

import torch

from ..core.checks import is_integer
from ..core.errors import VlmLensError

if TYPE_CHECKING:
    from ..models.base import Adapter
    from .loading import LensModel

__all__ = ["CHUNK_BYTES", "Lens"]

#: Default bytes of float32 logits materialised at once (per chunk of rows).
CHUNK_BYTES = 64 * 2**20


class Lens:
    """What every lens provides; subclasses implement :meth:`logits` (and may narrow :meth:`readable_layers`).

    Attributes:
        adapter: The family adapter of the model the lens decodes through (final norm, output head, tokenizer).
        chunk_bytes: Budget for one chunk of float32 logits in :meth:`topk` / :meth:`targets`.
        name: What figures and reports call the lens (``"logit lens"``, ``"tuned lens"``).
        kind: The short name runs record (``"logit"``, ``"tuned"``).
        layer_dependent: Whether the reading depends on the hidden index (False: rows of all layers are decoded
            together, as the logit lens does).
    """

    adapter: "Adapter"
    chunk_bytes: int = CHUNK_BYTES
    name: ClassVar[str] = "lens"
    kind: ClassVar[str] = "lens"
    layer_dependent: ClassVar[bool] = True

    # ----------------------------------------------------------------------------------------------- to implement
    def logits(self, hidden: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """``[..., d_model]`` hidden states of hidden index ``layer`` -> ``[..., vocab]`` float32 logits."""
        raise NotImplementedError

    def readable_layers(self) -> list[int]:
        """The hidden indices this lens can read (default: all, 0..n_layers)."""
        return list(range(self.adapter.n_layers + 1))

    def describe(self) -> dict[str, Any]:
        """A JSON description that identifies the lens (recorded in run fingerprints and metadata)."""
        return {"kind": self.kind}

    # ----------------------------------------------------------------------------------------------------- shared
    @property
    def vocab_size(self) -> int:
        return int(self.adapter.output_head.weight.shape[0])

    def check(self, model: "LensModel", layers: Sequence[int] | None = None, *, argument: str = "lens") -> None:
        """Refuse to read ``layers`` (hidden indices) of ``model`` when this lens cannot.

        Raises:
            VlmLensError: The lens belongs to another model, or cannot read one of ``layers``; the message names
                ``argument``.
        """
        if self.adapter.model is not model.model:
            from .fingerprint import weights_fingerprint

            if weights_fingerprint(self.adapter.model) != weights_fingerprint(model.model):
                raise VlmLensError(f"{argument}: this {self.name} decodes through another model's weights than the "
                                   f"one being read ({model.name or type(model.model).__name__}); load the lens onto "
                                   "that model (e.g. vl.TunedLens.load(folder, model)).")
        if layers is None:
            return
        n = self.adapter.n_layers
        readable = set(self.readable_layers())
        outside = [l for l in layers if isinstance(l, bool) or not isinstance(l, int) or not 0 <= l <= n]
        if outside:
            raise VlmLensError(f"{argument}: hidden indices {outside} are out of range; this model has 0..{n} "
                               "(0 = decoder input).")
        missing = [l for l in layers if l not in readable]
        if missing:
            raise VlmLensError(f"{argument}: this {self.name} cannot read hidden indices {missing}; it reads "
                               f"{_ranges(sorted(readable))}. Read only those layers (layers=[...]), fit the lens on "
                               "every layer, or use the logit lens (lens=None).")

    def rows_logits(self, rows: torch.Tensor, layers: torch.Tensor | None) -> torch.Tensor:
        """``[row, d_model]`` hidden states, row ``i`` at hidden index ``layers[i]`` -> ``[row, vocab]`` float32
        logits, decoded through the final norm and head in one call (a lens that depends on the layer overrides it).
        """
        return self.logits(rows)

    def layer_logits(self, hidden: torch.Tensor, layers: Sequence[int], dim: int = 0) -> torch.Tensor:
        """Hidden states with one hidden index per entry along ``dim`` (``layers[i]`` for entry ``i``) ->
        float32 logits of the same shape with ``vocab`` last (no chunking: for small inputs)."""
        if len(layers) != hidden.shape[dim]:
            raise ValueError(f"{len(layers)} layers for {hidden.shape[dim]} entries along dim {dim} of hidden states")
        if not self.layer_dependent:
            return self.logits(hidden)
        moved = hidden.movedim(dim, 0)
        index = torch.as_tensor(list(layers), dtype=torch.long).repeat_interleave(moved[0].numel() // hidden.shape[-1])
        logits = self.rows_logits(moved.reshape(-1, hidden.shape[-1]), index)
        return logits.reshape(*moved.shape[:-1], -1).movedim(0, dim)

    @torch.no_grad()
    def topk(self, hidden: torch.Tensor, k: int, *, layers: Sequence[int] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` probabilities and token ids for each row of ``hidden`` (``[..., d_model]``; with ``layers``,
        ``[layer, ..., d_model]`` with row ``i`` at hidden index ``layers[i]``).

        Returns:
            ``(probs, ids)``, each ``[..., k]``, sorted by decreasing probability; on the CPU.
        """
        if not is_integer(k) or not 1 <= int(k) <= self.vocab_size:
            raise VlmLensError(f"topk={k!r}: expected an integer between 1 and the vocabulary size "
                               f"({self.vocab_size}).")
        k = int(k)
        shape = hidden.shape[:-1]
        probs = torch.empty(*shape, k).reshape(-1, k)
        ids = torch.empty(*shape, k, dtype=torch.long).reshape(-1, k)
        for start, logits in self._chunks(hidden, layers):
            p, i = torch.softmax(logits, dim=-1).topk(k, dim=-1)
            probs[start:start + len(p)], ids[start:start + len(p)] = p.cpu(), i.cpu()
        return probs.reshape(*shape, k), ids.reshape(*shape, k)

    @torch.no_grad()
    def targets(self, hidden: torch.Tensor, token_ids: Sequence[int], *, layers: Sequence[int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Probability and rank (1 = most probable) of each target token for each row of ``hidden`` (shaped as
        for :meth:`topk`).

        Returns:
            ``(probs, ranks)``, each ``[..., n_targets]``; on the CPU. A token's rank counts the tokens with a
            strictly larger logit, plus one.
        """
        index = torch.as_tensor(list(token_ids), dtype=torch.long)
        if index.numel() and (index.min() < 0 or index.max() >= self.vocab_size):
            raise VlmLensError(f"target token ids {index.tolist()} fall outside the vocabulary [0, {self.vocab_size}).")
        shape = hidden.shape[:-1]
        n = len(index)
        probs = torch.empty(*shape, n).reshape(-1, n)
        ranks = torch.empty(*shape, n, dtype=torch.long).reshape(-1, n)
        for start, logits in self._chunks(hidden, layers):
            local = index.to(logits.device)
            chosen = logits[:, local]
            probs[start:start + len(logits)] = torch.softmax(logits, dim=-1)[:, local].cpu()
            for j in range(n):  # one [rows, vocab] comparison at a time keeps the chunk budget
                ranks[start:start + len(logits), j] = ((logits > chosen[:, j:j + 1]).sum(-1) + 1).cpu()
        return probs.reshape(*shape, n), ranks.reshape(*shape, n)

    def _chunks(self, hidden: torch.Tensor, layers: Sequence[int] | None) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first row, logits)`` over the rows of ``hidden`` flattened, at most ``chunk_bytes`` of logits each.
        Every lens cuts the same chunks, so a lens whose translators are the identity decodes exactly the tensors
        the logit lens decodes."""
        rows = max(1, self.chunk_bytes // (4 * self.vocab_size))
        flat = hidden.reshape(-1, hidden.shape[-1])
        index = None
        if self.layer_dependent:
            if layers is None:
                raise VlmLensError(f"the {self.name} reads each hidden index through its own translator; pass "
                                   "layers=[...] (the hidden index of each leading row of hidden).")
            if len(layers) != hidden.shape[0]:
                raise ValueError(f"{len(layers)} layers for {hidden.shape[0]} rows of hidden states")
            per_layer = flat.shape[0] // max(len(layers), 1)
            index = torch.as_tensor(list(layers), dtype=torch.long).repeat_interleave(per_layer)
        for start in range(0, flat.shape[0], rows):
            part = None if index is None else index[start:start + rows]
            yield start, self.rows_logits(flat[start:start + rows], part)


def _ranges(values: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0..2, 5, 7..8"``."""
    parts, start = [], None
    for k, v in enumerate(values):
        if start is None:
            start = v
        if k + 1 == len(values) or values[k + 1] != v + 1:
            parts.append(f"{start}..{v}" if v > start else str(v))
            start = None
    return ", ".join(parts) or "nothing"
