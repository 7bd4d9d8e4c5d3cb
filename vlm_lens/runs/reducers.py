"""The reducer protocol every dataset-level analysis follows, and how a batch of samples is traced for one.

Why reducers: a run over thousands of images must hold memory constant, survive being killed, and split over
ranks. An analysis therefore never sees the dataset at once. It sees one sample's traces at a time
(:meth:`Reducer.update`; a run calls :meth:`Reducer.update_batch` with a batch's samples in order, which reducers
override to batch their own tensor work) and keeps two kinds of state:

- **rows**: per-sample records (one table per kind of record, each starting with the sample's ``index`` and
  ``id``). A run drains them to parquet part files at every checkpoint, so they do not pile up in memory;
- **sums**: float64 tensors summed over samples (attention mass per layer / head / segment, ...). Shapes may grow
  (a longer image span); :func:`accumulate` pads with zeros.

Two reducers of the same analysis and arguments :meth:`Reducer.merge` by adding sums and concatenating rows;
:meth:`Reducer.result` turns rows (sorted by sample index) and sums into DataFrames. Sums are stored with
safetensors and rows as parquet: nothing is pickled.

What an analysis needs traced is a :class:`TraceRequest`; analyses whose requests trace the same tokens share
one traced forward per batch (:func:`merge_requests`).

Example:
    >>> r = Quality()                                     # doctest: +SKIP
    >>> r.update(Sample(0, "a.jpg", mos=3.2), [t])        # doctest: +SKIP
    >>> r.result()["samples"]                             # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import pandas as pd
import torch

from ..core.errors import VlmLensError
from ..core.sampling import derive_seed
from ..tracing.settings import Generation, Keep
from ..tracing.tracer import trace

if TYPE_CHECKING:
    from ..tracing.loading import LensModel
    from ..tracing.record import Trace
    from .datasets import Sample

__all__ = ["Reducer", "TraceRequest", "accumulate", "merge_requests", "trace_samples"]

_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class TraceRequest:
    """What an analysis needs traced for each sample.

    Attributes:
        prompt: The user's question.
        prefill: Text the assistant's turn starts with, appended after the chat template's generation prompt
            (Q-Align: "The quality of the image is", so the level word is the next token). None: the answer is
            all generated.
        generate: Tokens to generate (0: read the prompt's last position only).
        repeats: Queries per sample (> 1 for instability).
        sampled: Sample the answer (temperature / top-p, seeded per sample and repeat) instead of greedy decoding.
        temperature, top_p: Sampling settings.
        seed: Sampling seed; repeat ``r`` of sample ``id`` draws with ``derive_seed(seed, id, r)``.
        system: A system prompt, or None.
        hidden: Keep every layer's hidden state at the last ``generate + 1`` positions (for the logit lens).
        attention: Keep attention rows (every layer, at the last prompt position and every response position).
        all_positions: With ``hidden``, keep every position of prompt and answer (for lens statistics over all
            positions, and fitting a tuned lens).
    """

    prompt: str
    prefill: str | None = None
    generate: int = 0
    repeats: int = 1
    sampled: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    system: str | None = None
    hidden: bool = False
    attention: bool = False
    all_positions: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise VlmLensError(f"prompt={self.prompt!r}: expected a non-empty question.")
        if not isinstance(self.generate, int) or self.generate < 0:
            raise VlmLensError(f"generate={self.generate!r}: expected a number of tokens >= 0.")
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise VlmLensError(f"repeats={self.repeats!r}: expected an integer >= 1.")
        if self.repeats > 1 and not self.sampled:
            raise VlmLensError(f"repeats={self.repeats} with greedy decoding gives the same answer every time; "
                               "set sampled=True (with temperature / top_p) or repeats=1.")
        if self.sampled and (not self.generate or not self.temperature > 0 or not 0 < self.top_p <= 1):
            raise VlmLensError(f"sampling needs generate >= 1, temperature > 0 and 0 < top_p <= 1; got "
                               f"generate={self.generate}, temperature={self.temperature}, top_p={self.top_p}.")

    @property
    def key(self) -> tuple:
        """The fields that decide which tokens are traced; requests with equal keys can share traces."""
        return (self.prompt, self.prefill, self.generate, self.repeats, self.sampled,
                *((self.temperature, self.top_p, self.seed) if self.sampled else (None, None, None)), self.system)


def merge_requests(requests: Sequence[TraceRequest]) -> TraceRequest:
    """One request that serves all of ``requests`` (they must share :attr:`TraceRequest.key`)."""
    keys = {r.key for r in requests}
    if len(keys) != 1:
        raise ValueError(f"cannot merge requests that trace different tokens: {keys}")
    return dataclasses.replace(requests[0], hidden=any(r.hidden for r in requests),
                               attention=any(r.attention for r in requests),
                               all_positions=any(r.all_positions for r in requests))


def trace_samples(model: "LensModel", images: Sequence[Any], ids: Sequence[str], request: TraceRequest,
                  batch_size: int) -> list[list["Trace"]]:
    """Trace every sample ``request.repeats`` times, ``batch_size`` rows per forward.

    Args:
        images: One RGB image per sample.
        ids: The samples' ids; sampled repeat ``r`` of sample ``id`` is seeded with
            ``derive_seed(request.seed, id, r)``.

    Returns:
        Per sample, its traces (one per repeat). Each equals the trace the sample gets alone: batches are left
        padded, and sampled rows draw from their own generators (:class:`~vlm_lens.sampling.RowSampler`).
    """
    adapter = model.adapter
    rows = [(i, r) for i in range(len(images)) for r in range(request.repeats)]
    if request.hidden and request.all_positions:
        keep = Keep(attention=request.attention)
    elif request.hidden:
        keep = Keep(positions=list(range(-(request.generate + 1), 0)), attention=request.attention)
    else:
        keep = Keep(layers=[adapter.n_layers], positions=[-1], attention=request.attention)
    out: list[list[Trace]] = [[] for _ in images]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        generate: int | Generation = request.generate
        if request.sampled:
            generate = Generation(request.generate, do_sample=True, temperature=request.temperature,
                                  top_p=request.top_p, seed=[derive_seed(request.seed, ids[i], r) for i, r in chunk])
        traces = trace(model, [images[i] for i, _ in chunk], [request.prompt] * len(chunk), generate=generate,
                       prefill=request.prefill, system=request.system, keep=keep)
        for (i, _), t in zip(chunk, traces):
            out[i].append(t)
    return out


def accumulate(sums: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    """``sums[key] += value`` in float64, zero-padding either side to the larger shape in every dimension."""
    value = value.detach().to(device="cpu", dtype=torch.float64)
    if key not in sums:
        sums[key] = value.clone()
        return
    current = sums[key]
    if current.ndim != value.ndim:
        raise ValueError(f"sum {key!r}: {current.ndim}-d state, {value.ndim}-d update")
    if current.shape != value.shape:
        shape = [max(a, b) for a, b in zip(current.shape, value.shape)]
        current, value = _pad(current, shape), _pad(value, shape)
    sums[key] = current + value


def _pad(t: torch.Tensor, shape: list[int]) -> torch.Tensor:
    if list(t.shape) == shape:
        return t
    out = t.new_zeros(shape)
    out[tuple(slice(0, s) for s in t.shape)] = t
    return out


class Reducer:
    """Base class of dataset-level analyses: ``update`` per sample, ``merge`` partial states, ``result`` tables.

    Subclasses set :attr:`name` and :attr:`tables`, store their arguments so that :meth:`config` can return them
    (the run's fingerprint and metadata record them), and implement :meth:`request`, :meth:`update` and
    :meth:`result`. One instance may take its own table prefix with :meth:`named`, so that one run computes the
    same analysis twice (two reading positions, say) into tables that do not collide.
    """

    #: Prefix of the analysis' tables in a run (``"quality"`` -> ``"quality.samples"``); :meth:`named` sets another
    #: one on an instance.
    name: ClassVar[str] = "reducer"
    #: Names of the per-sample row tables :meth:`update` emits to.
    tables: ClassVar[tuple[str, ...]] = ()
    #: True for analyses that trace the samples again themselves (under interventions): the run then calls
    #: ``update_batch(samples, traces, images=...)`` with the batch's images.
    needs_images: ClassVar[bool] = False

    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {table: [] for table in self.tables}
        self.sums: dict[str, torch.Tensor] = {}

    # ----------------------------------------------------------------------------------------- to implement
    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable; ``type(self)(**config())`` is an empty twin."""
        raise NotImplementedError

    def request(self) -> TraceRequest:
        raise NotImplementedError

    def update(self, sample: "Sample", traces: list["Trace"]) -> None:
        """Add one sample (its traces: one per repeat of :meth:`request`)."""
        raise NotImplementedError

    def update_batch(self, samples: Sequence["Sample"], traces: Sequence[list["Trace"]]) -> None:
        """Add the samples of a batch, in order; the same as :meth:`update` for each. Reducers override it to
        batch their own tensor work (:class:`~vlm_lens.iqa.Quality` runs its logit lens once per batch)."""
        for sample, sample_traces in zip(samples, traces):
            self.update(sample, sample_traces)

    def result(self, rows: dict[str, pd.DataFrame] | None = None, *,
               higher_is_better: bool = True) -> dict[str, pd.DataFrame]:
        """Final tables from ``rows`` (default: the rows held in memory) and the sums; ``higher_is_better`` is the
        dataset's score direction (for correlations)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------ shared
    def fresh(self) -> "Reducer":
        """An empty reducer with the same arguments (and the same table prefix)."""
        twin = type(self)(**self.arguments())
        if self.name != type(self).name:
            twin.name = self.name
        return twin

    def arguments(self) -> dict[str, Any]:
        """The constructor arguments of an equal, empty reducer (default: :meth:`config`; a reducer holding an
        object its config only describes, such as a lens, returns the object)."""
        return self.config()

    def named(self, name: str) -> "Reducer":
        """Give this analysis its own table prefix (``name.<table>`` instead of ``<class name>.<table>``) and
        return it, so that a run can hold the same analysis twice with different arguments.

        Example:
            >>> class Count(Reducer):
            ...     name = "count"
            ...     def config(self): return {}
            >>> Count().named("count_again").name, Count().named("count_again").fresh().name
            ('count_again', 'count_again')
        """
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise VlmLensError(f"named({name!r}): expected a table prefix of lower-case letters, digits and "
                               "underscores that starts with a letter (e.g. 'attention_level').")
        self.name = name
        return self

    def emit(self, table: str, row: dict[str, Any]) -> None:
        self.rows[table].append(row)

    def take_rows(self) -> dict[str, pd.DataFrame]:
        """The rows emitted since the last call, as DataFrames (empty tables omitted); memory is released."""
        out = {table: pd.DataFrame(rows) for table, rows in self.rows.items() if rows}
        self.rows = {table: [] for table in self.tables}
        return out

    def frames(self, rows: dict[str, pd.DataFrame] | None) -> dict[str, pd.DataFrame]:
        """``rows`` (or the in-memory rows), every table present, sorted stably by sample ``index``."""
        if rows is None:
            rows = {table: pd.DataFrame(r) for table, r in self.rows.items()}
        out = {}
        for table in self.tables:
            frame = rows.get(table, pd.DataFrame())
            if "index" in frame.columns:
                frame = frame.sort_values("index", kind="stable").reset_index(drop=True)
            out[table] = frame
        return out

    def merge(self, other: "Reducer") -> "Reducer":
        """Add ``other``'s sums and rows to this reducer (in place) and return it."""
        if type(other) is not type(self) or other.config() != self.config() or other.name != self.name:
            raise VlmLensError(f"cannot merge {type(other).__name__}({other.config()}) into "
                               f"{type(self).__name__}({self.config()}): analyses differ.")
        for key, value in other.sums.items():
            accumulate(self.sums, key, value)
        for table, rows in other.rows.items():
            self.rows[table].extend(rows)
        return self

    def state(self) -> dict[str, torch.Tensor]:
        """The sums, for safetensors (rows are saved separately)."""
        return {k: v.contiguous() for k, v in self.sums.items()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.sums = {k: v.to(torch.float64) for k, v in tensors.items()}

    def __repr__(self) -> str:
        named = f".named({self.name!r})" if self.name != type(self).name else ""
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config().items())}){named}"
