"""How far each layer's lens reading is from the model's output: KL per hidden index, logit lens vs a given lens.

Why: "the level word emerges at layer 20" says as much about the lens as about the model when the lens itself is
far from the output at layer 20. The quantity that says how far is ``KL(final || lens_l)``: the KL divergence (nats)
of the lens's distribution at hidden index ``l`` from the model's own output distribution at the same position, over
the whole vocabulary. This module computes it for the logit lens and for another lens (a tuned lens) on the same
traced positions — every position of prompt and answer — summed per layer over a dataset (:class:`LensKL`, a
reducer: streaming, resumable, over ranks like any analysis of a run) or for a few traces (:func:`kl_sums`).

The question asked (the prompt) is the domain's: generic code names none, and the layer above (``vlm_lens.biqa``)
registers its default (:func:`register_default_prompt`), which :func:`vlm_lens.TunedLens.fit` uses too.

Example:
    >>> r = vl.run(m, ds, [LensKL(lens)])                                  # doctest: +SKIP
    >>> r["lens_kl.layers"]                        # layer, logit, tuned, n_positions    # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd
import torch

from ..core.errors import VlmLensError
from ..tracing.lens import Lens
from ..tracing.logit_lens import lens_kind, resolve_lens
from .reducers import Reducer, TraceRequest

if TYPE_CHECKING:
    from ..tracing.record import Trace
    from .datasets import Sample

__all__ = ["LensKL", "default_prompt", "kl_sums", "register_default_prompt"]

#: The question generic lens tools ask when none is given; registered by the domain layer.
_DEFAULT_PROMPT: list[str] = []


def register_default_prompt(prompt: str) -> None:
    """Set the prompt :class:`LensKL` and :func:`vlm_lens.TunedLens.fit` ask when given none (``vlm_lens.biqa``
    registers its quality question on import)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"default prompt {prompt!r}: expected a non-empty question")
    _DEFAULT_PROMPT[:] = [prompt]


def default_prompt() -> str:
    """The registered default prompt (see :func:`register_default_prompt`)."""
    if not _DEFAULT_PROMPT:
        raise VlmLensError("prompt=None but no default prompt is registered; pass prompt='...', or import vlm_lens "
                           "(which registers the quality question as the default).")
    return _DEFAULT_PROMPT[0]


def kl_sums(traces: Sequence["Trace"], lens: Lens | None = None) -> dict[str, torch.Tensor]:
    """KL of the logit lens and of ``lens`` to the model's output, summed over every kept position of ``traces``.

    The model's output distribution at a position is read from the trace's last hidden index (the lens there *is*
    the model's logits), so every kept position counts, not only the query positions.

    Args:
        traces: Traces of one model that kept every hidden index.
        lens: The lens compared with the logit lens (None: the logit lens twice).

    Returns:
        ``logit`` and ``lens``: ``[layer]`` float64 sums of KL (nats) over positions, for hidden indices
        ``0..n_layers``; ``positions``: the number of positions summed (a 0-d float64 tensor).
    """
    if not traces:
        raise VlmLensError("kl_sums: expected at least one trace.")
    model = traces[0].model
    if model is None:
        raise VlmLensError("kl_sums needs traces with their model attached (the lens reads through its head).")
    n = model.adapter.n_layers
    layers = list(range(n + 1))
    for t in traces:
        if list(t.layers) != layers:
            raise VlmLensError(f"kl_sums needs every hidden index 0..{n} kept; a trace kept {t.layers}. Trace with "
                               "keep=vl.Keep(layers=None) (the default).")
    logit = resolve_lens(None, model)
    other = resolve_lens(lens, model, layers)
    sums = {"logit": torch.zeros(n + 1, dtype=torch.float64), "lens": torch.zeros(n + 1, dtype=torch.float64)}
    rows = max(1, logit.chunk_bytes // (4 * logit.vocab_size * (n + 1)))
    count = 0
    for t in traces:
        hidden = t.hidden  # [layer, pos, d_model]
        for start in range(0, hidden.shape[1], rows):
            part = hidden[:, start:start + rows]
            final = torch.log_softmax(logit.logits(part[n]).double(), -1)
            for name, reader in (("logit", logit), ("lens", other)):
                lens_logits = reader.layer_logits(part, layers).double()
                kl = (final.exp() * (final - torch.log_softmax(lens_logits, -1))).sum(-1)  # [layer, pos]
                sums[name] += kl.clamp(min=0.0).sum(-1).cpu()
            count += part.shape[1]
    return {**sums, "positions": torch.tensor(float(count), dtype=torch.float64)}


class LensKL(Reducer):
    """Dataset-level KL of the logit lens and of ``lens`` to the model's output, per hidden index.

    Args:
        lens: The lens compared with the logit lens (e.g. a :class:`~vlm_lens.tracing.tuned_lens.TunedLens`);
            None compares the logit lens with itself.
        prompt: The question (default: the registered default prompt, the runs' quality question).
        generate: Tokens of the answer generated (greedy) and traced after the prompt.
        system: A system prompt, or None.

    Tables: ``samples`` (per sample and hidden index: ``index, id, layer, logit, lens, n_positions``: mean KL over
    the sample's positions), ``layers`` (per hidden index: ``layer, logit, lens, n_positions, n_samples``: mean KL
    over every position of every sample), and the lens it was read through in ``layers.attrs["lens"]``.

    Example:
        >>> vl.run(m, ds, [LensKL(vl.TunedLens.load(folder, m))])["lens_kl.layers"]   # doctest: +SKIP
    """

    name = "lens_kl"
    tables = ("samples",)

    def __init__(self, lens: Lens | None = None, *, prompt: str | None = None, generate: int = 32,
                 system: str | None = None) -> None:
        super().__init__()
        if lens is not None and not isinstance(lens, Lens):
            raise VlmLensError(f"lens={lens!r}: expected None or a lens (e.g. vl.TunedLens.load(folder, model)); got "
                               f"{type(lens).__name__}.")
        self.lens = lens
        self.prompt = default_prompt() if prompt is None else prompt
        self.generate, self.system = generate, system
        self.request()  # checks prompt and generate now, not at the first batch

    def config(self) -> dict[str, Any]:
        return {"lens": None if self.lens is None else self.lens.describe(), "prompt": self.prompt,
                "generate": self.generate, "system": self.system}

    def arguments(self) -> dict[str, Any]:
        return {"lens": self.lens, "prompt": self.prompt, "generate": self.generate, "system": self.system}

    def request(self) -> TraceRequest:
        return TraceRequest(self.prompt, None, self.generate, system=self.system, hidden=True, all_positions=True)

    def update(self, sample: "Sample", traces: list["Trace"]) -> None:
        sums = kl_sums(traces[:1], self.lens)
        positions = float(sums["positions"])
        for layer in range(len(sums["logit"])):
            self.emit("samples", {"index": sample.index, "id": sample.id, "layer": layer,
                                  "logit": float(sums["logit"][layer]) / positions,
                                  "lens": float(sums["lens"][layer]) / positions, "n_positions": int(positions)})
        for name in ("logit", "lens", "positions"):
            self._add(name, sums[name])
        self._add("samples", torch.tensor(1.0, dtype=torch.float64))

    def _add(self, key: str, value: torch.Tensor) -> None:
        from .reducers import accumulate

        accumulate(self.sums, key, value)

    def result(self, rows: dict[str, pd.DataFrame] | None = None, *,
               higher_is_better: bool = True) -> dict[str, pd.DataFrame]:
        frames = self.frames(rows)
        if "positions" in self.sums and float(self.sums["positions"]) > 0:
            positions = float(self.sums["positions"])
            n = len(self.sums["logit"])
            layers = pd.DataFrame({"layer": range(n), "logit": (self.sums["logit"] / positions).numpy(),
                                   "lens": (self.sums["lens"] / positions).numpy(), "n_positions": int(positions),
                                   "n_samples": int(self.sums["samples"])})
        else:
            layers = pd.DataFrame(columns=["layer", "logit", "lens", "n_positions", "n_samples"])
        layers.attrs["lens"] = lens_kind(self.lens)
        return {**frames, "layers": layers}
