"""``run``: stream a dataset through a model once, feeding every analysis, with checkpoints, resume and ranks.

Why a loop of its own instead of a script per analysis: the paper's findings come from hundreds of images per
checkpoint and several analyses per image, and a long run must (1) hold memory constant in the number of samples,
(2) survive being killed and continue to the identical result, (3) refuse to mix results of a different model or
different arguments into a folder, and (4) split over the ranks of ``torchrun`` / ``accelerate launch``.

How: samples are cut into batches of ``batch_size`` in dataset order; batch ``b`` belongs to rank
``b % world_size``, so every batch — and with left padding and per-row seeds every per-sample result — is the same
whatever the number of ranks. Analyses (:class:`~vlm_lens.reducers.Reducer`) that trace the same tokens share one
traced forward per batch. Each rank checkpoints atomically (:mod:`vlm_lens.runs.checkpoint`); at the end rank 0 merges
the ranks' reducers from disk (ranks must share the output folder's file system) and writes the results:
``results/<analysis>.<table>.parquet`` (+ ``.csv``), ``results/skipped.*`` and ``results/meta.json``.

Models too large for one GPU: load them with ``vl.load(path, device_map="auto")`` and run in one process; the
run only moves inputs to ``model.device``.

Example:
    >>> import vlm_lens as vl                                                     # doctest: +SKIP
    >>> m = vl.load("zoo:tiny-biqa-one-stage")                                    # doctest: +SKIP
    >>> ds = vl.datasets.from_csv("koniq_test.csv", image="image_name", score="MOS")  # doctest: +SKIP
    >>> r = vl.run(m, ds, out="runs/one-stage", batch_size=8)                      # doctest: +SKIP
    >>> r["quality.correlations"]                                                  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from ..core.checks import as_bool, as_folder, as_int, make_folder
from ..core.errors import ImageError, VlmLensError
from ..core.version import __version__
from ..tracing.loading import LensModel
from .checkpoint import (
    RankState,
    model_fingerprint,
    write_json,
    write_table,
)
from .datasets import Dataset
from .folder import RUN_FILE, check_out, claim, discard, read_results, read_run_info, stored_info
from .reducers import Reducer, merge_requests, trace_samples

__all__ = ["RunResult", "default_analyses", "register_default_analyses", "register_table_upgrade", "run"]

SKIPPED_COLUMNS = ["index", "id", "image", "reason"]


@dataclass
class RunResult:
    """The tables of a finished run.

    Attributes:
        tables: ``"<analysis>.<table>"`` -> DataFrame (e.g. ``"quality.correlations"``); each analysis documents
            its tables' columns.
        skipped: Samples that were not analysed: ``index, id, image, reason``.
        meta: Model (id, revision, fingerprint), dataset, analyses and their arguments, their seeds, batch size,
            world size, library versions, counts and timings.
        folder: Where the run lives, or None for a run without ``out``.
    """

    tables: dict[str, pd.DataFrame]
    skipped: pd.DataFrame
    meta: dict[str, Any]
    folder: Path | None = None

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self.tables:
            raise VlmLensError(f"no table {name!r} in this run; it has {sorted(self.tables)}.")
        return self.tables[name]

    def save(self, folder: str | Path) -> Path:
        """Write ``<table>.parquet`` + ``.csv`` per table, ``skipped.*`` and ``meta.json`` (which lists the tables)
        into ``folder``."""
        folder = make_folder(folder, "folder")
        for name, frame in self.tables.items():
            write_table(frame, folder / name)
        write_table(self.skipped, folder / "skipped")
        write_json(folder / "meta.json", {**self.meta, "tables": sorted(self.tables)})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "RunResult":
        """Read a run folder (the one given as ``out=``) or its ``results/`` folder: the tables the run wrote (other
        files there are not tables of the run), through the registered upgrades of older folders. A damaged file
        raises :class:`~vlm_lens.core.errors.DamagedFileError` naming it."""
        tables, skipped, meta, results = read_results(as_folder(folder, "folder"))
        for upgrade in _UPGRADES:
            tables = upgrade(tables)
        return cls(tables, skipped, meta, folder=results.parent)

    def __repr__(self) -> str:
        return (f"RunResult(model={self.meta.get('model', {}).get('name')!r}, n_done={self.meta.get('n_done')}, "
                f"n_skipped={len(self.skipped)}, tables={sorted(self.tables)})")


#: Builds the analyses ``run`` computes when none are given; set by the domain layer (``vlm_lens.biqa``).
_DEFAULT_ANALYSES: Callable[[], list[Reducer]] | None = None
#: Functions that bring the tables of a run folder written by an earlier version up to date, in order.
_UPGRADES: list[Callable[[dict[str, pd.DataFrame]], dict[str, pd.DataFrame]]] = []


def register_table_upgrade(upgrade: Callable[[dict[str, pd.DataFrame]], dict[str, pd.DataFrame]]) -> None:
    """Have :meth:`RunResult.load` pass the tables it reads through ``upgrade`` (``{name: frame} -> {name:
    frame}``), so that a run folder written by an earlier version reads as one written now (a renamed column, say).
    The layer that owns the tables registers it; registering the same function twice is a no-op."""
    if upgrade not in _UPGRADES:
        _UPGRADES.append(upgrade)


def register_default_analyses(factory: Callable[[], list[Reducer]]) -> None:
    """Set what ``run(..., analyses=None)`` computes. The run engine names no analysis itself: the domain layer
    above it (``vlm_lens.biqa``: Q-Align quality and attention by segment) registers its defaults on import."""
    global _DEFAULT_ANALYSES
    _DEFAULT_ANALYSES = factory


def default_analyses() -> list[Reducer]:
    """The analyses ``run`` computes when none are given (``import vlm_lens`` registers Q-Align quality with the
    per-layer lens, and attention by segment, both read from one traced forward)."""
    if _DEFAULT_ANALYSES is None:
        raise VlmLensError("analyses=None but no default analyses are registered; pass analyses=[...], or import "
                           "vlm_lens (which registers the BIQA defaults).")
    return _DEFAULT_ANALYSES()


def run(model: LensModel, dataset: Dataset, analyses: Sequence[Reducer] | None = None, out: str | Path | None = None,
        *, batch_size: int = 8, checkpoint_every: int = 64, progress: bool = True,
        overwrite: bool = False) -> RunResult:
    """Run ``analyses`` over every sample of ``dataset``, resumably when ``out`` is given.

    Args:
        model: From :func:`vlm_lens.load`.
        dataset: From :mod:`vlm_lens.runs.datasets`.
        analyses: Reducers (:class:`~vlm_lens.iqa.Quality`, :class:`~vlm_lens.attention.Attention`,
            :class:`~vlm_lens.instability.Instability`, :class:`~vlm_lens.grounding.Grounding`, ...); default
            :func:`default_analyses`.
        out: Run folder. A finished run there with the same fingerprint is loaded, not recomputed; an unfinished
            one is resumed; one of another model or other arguments is refused. None: in memory, no checkpoints.
        batch_size: Samples per batch; one forward traces at most ``batch_size`` rows (a sample asked ``k`` times
            takes ``k`` rows).
        checkpoint_every: Samples between checkpoints (rounded up to whole batches).
        progress: Show a progress bar (rank 0 only).
        overwrite: Delete the run already in ``out`` first — only what a run wrote there (its ``run.json``, its
            ``state/rank-*`` folders, and its tables, ``skipped.*`` and ``meta.json`` in ``results/``); other files
            stay. ``out`` must be a new or empty folder, or a folder holding a run (its ``run.json``): a folder of
            other files is refused, with or without ``overwrite``.

    Returns:
        A :class:`RunResult`, the same on every rank.

    Raises:
        VlmLensError: Bad arguments, an unwritable ``out``, ``out=""``, or ``out`` holding files of its own.
        RunMismatchError: ``out`` holds a run of another model or other arguments.
        DamagedFileError: A file of the run in ``out`` cannot be read back.
    """
    if not isinstance(model, LensModel):
        raise VlmLensError(f"model: expected the result of vl.load(...) or vl.wrap(...), got {type(model).__name__}.")
    if not isinstance(dataset, Dataset):
        raise VlmLensError(f"dataset: expected a vl.datasets.Dataset (from_csv, from_json, from_images), got "
                           f"{type(dataset).__name__}.")
    batch_size = as_int(batch_size, "batch_size", minimum=1)
    checkpoint_every = as_int(checkpoint_every, "checkpoint_every", minimum=1, meaning="a number of samples")
    overwrite = as_bool(overwrite, "overwrite")
    folder = as_folder(out, "out") if out is not None else None
    reducers = _check_analyses(analyses)
    rank, world, owned = _distributed(model)
    try:
        if world > 1 and out is None:
            raise VlmLensError(f"a run over {world} ranks needs out=: the ranks merge their results through files "
                               "in that folder (on a file system all ranks share).")
        fingerprint = {"format_version": 1, "model": model_fingerprint(model), "dataset": dataset.describe(),
                       "analyses": [{"name": r.name, "class": type(r).__name__, "config": r.config()}
                                    for r in reducers],
                       "batch_size": batch_size, "world_size": world}
        if folder is not None:
            finished = _prepare(folder, fingerprint, overwrite, rank, world)
            if finished is not None:
                return finished
        return _execute(model, dataset, reducers, folder, fingerprint, batch_size, checkpoint_every, progress,
                        rank, world)
    finally:
        if owned:
            torch.distributed.destroy_process_group()


# ------------------------------------------------------------------------------------------------------ setup
def _check_analyses(analyses: Sequence[Reducer] | None) -> list[Reducer]:
    reducers = default_analyses() if analyses is None else list(analyses)
    bad = [a for a in reducers if not isinstance(a, Reducer)]
    if not reducers or bad:
        raise VlmLensError(f"analyses: expected a non-empty list of analyses (Quality(), Attention(), ...); got "
                           f"{[type(a).__name__ for a in bad] or 'an empty list'}.")
    names = [r.name for r in reducers]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise VlmLensError(f"analyses {names}: each table prefix may appear once per run ({twice} would write the "
                           f"same tables); give each further one its own, e.g. .named('{twice[0]}_2').")
    return [r.fresh() for r in reducers]


def _distributed(model: LensModel) -> tuple[int, int, bool]:
    """(rank, world size, whether this call initialised the process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if model.device.type == "cuda":
            torch.cuda.set_device(model.device)  # NCCL collectives run on the rank's own device
        dist.init_process_group(backend="nccl" if model.device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _prepare(folder: Path, fingerprint: dict, overwrite: bool, rank: int, world: int) -> RunResult | None:
    """Check (and create) the run folder; return the finished run if there is one with this fingerprint."""
    if rank == 0:
        check_out(folder)  # a file, or a folder of the user's own files: refused, overwrite or not
        if overwrite:
            discard(folder, [a["name"] for a in fingerprint["analyses"]])  # only what a run wrote
    _barrier(world)
    existing = stored_info(folder, RUN_FILE, fingerprint, "a run of a different model or with different arguments",
                           "the stored run")
    if existing is not None and existing.get("status") == "done":
        return RunResult.load(folder)
    if rank == 0:
        claim(folder, RUN_FILE, fingerprint)
    _barrier(world)
    return None


# ------------------------------------------------------------------------------------------------------ loop
def _execute(model: LensModel, dataset: Dataset, reducers: list[Reducer], folder: Path | None, fingerprint: dict,
             batch_size: int, checkpoint_every: int, progress: bool, rank: int, world: int) -> RunResult:
    from tqdm.auto import tqdm

    groups: dict[tuple, list[Reducer]] = defaultdict(list)
    for reducer in reducers:
        groups[reducer.request().key].append(reducer)
    requests = {key: merge_requests([r.request() for r in members]) for key, members in groups.items()}
    batches = [list(range(s, min(s + batch_size, len(dataset)))) for s in range(0, len(dataset), batch_size)]
    mine = batches[rank::world]
    every = -(-checkpoint_every // batch_size)
    state = RankState(folder / "state" / f"rank-{rank}-of-{world}") if folder is not None else None
    skipped: list[dict[str, Any]] = []
    done = 0
    if state is not None:
        state.load(reducers)
        skipped, done = state.skipped, state.done_batches
    start = time.perf_counter()
    bar = tqdm(total=sum(len(b) for b in mine), initial=sum(len(b) for b in mine[:done]), unit="sample",
               disable=not progress or rank != 0, desc="vl.run")
    for batch in mine[done:]:
        samples, images = [], []
        for index in batch:
            sample = dataset[index]
            try:
                images.append(dataset.load_image(sample))
                samples.append(sample)
            except ImageError as err:
                skipped.append({"index": sample.index, "id": sample.id, "image": str(sample.image),
                                "reason": str(err)})
        for key, members in groups.items():
            if samples:
                traced = trace_samples(model, images, [s.id for s in samples], requests[key], batch_size)
                for reducer in members:
                    if reducer.needs_images:
                        reducer.update_batch(samples, traced, images=images)
                    else:
                        reducer.update_batch(samples, traced)
        done += 1
        bar.update(len(batch))
        bar.set_postfix(skipped=len(skipped))
        if state is not None and (done % every == 0 or done == len(mine)):
            state.done_batches, state.skipped = done, skipped
            state.commit(reducers)
    bar.close()
    elapsed = time.perf_counter() - start
    if state is not None and done == 0 == len(mine):
        state.commit(reducers)  # a rank without batches still leaves a (empty) final state
    if folder is None:
        return _finish(reducers, [{r.name: r.take_rows() for r in reducers}], skipped, dataset, fingerprint,
                       elapsed, None, world)
    _barrier(world)
    if rank == 0:
        _merge_and_write(reducers, folder, world, dataset, fingerprint, elapsed)
    _barrier(world)
    return RunResult.load(folder)


def _merge_and_write(reducers: list[Reducer], folder: Path, world: int, dataset: Dataset, fingerprint: dict,
                     elapsed: float) -> None:
    merged = [r.fresh() for r in reducers]
    parts: list[dict[str, dict[str, pd.DataFrame]]] = []
    skipped: list[dict[str, Any]] = []
    for rank in range(world):
        shard = [r.fresh() for r in reducers]
        state = RankState(folder / "state" / f"rank-{rank}-of-{world}")
        state.load(shard)
        for total, part in zip(merged, shard):
            total.merge(part)
        parts.append({r.name: state.rows(r) for r in shard})
        skipped += state.skipped
    result = _finish(merged, parts, skipped, dataset, fingerprint, elapsed, folder, world)
    result.save(folder / "results")
    info = read_run_info(folder)
    write_json(folder / RUN_FILE, {**info, "status": "done"})


def _finish(reducers: list[Reducer], parts: list[dict[str, dict[str, pd.DataFrame]]], skipped: list[dict],
            dataset: Dataset, fingerprint: dict, elapsed: float, folder: Path | None, world: int) -> RunResult:
    """Concatenate rows over ranks, compute every reducer's tables, and assemble the result."""
    tables: dict[str, pd.DataFrame] = {}
    for reducer in reducers:
        rows = {}
        for table in reducer.tables:
            frames = [p[reducer.name][table] for p in parts if table in (p.get(reducer.name) or {})]
            frames = [f for f in frames if len(f)]
            rows[table] = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        for name, frame in reducer.result(rows, higher_is_better=dataset.higher_is_better).items():
            tables[f"{reducer.name}.{name}"] = frame.reset_index(drop=True)
    skipped_frame = pd.DataFrame(skipped, columns=SKIPPED_COLUMNS).sort_values("index", kind="stable")
    n_skipped = len(skipped_frame)
    meta = {"model": fingerprint["model"], "dataset": fingerprint["dataset"], "analyses": fingerprint["analyses"],
            "seeds": {a["name"]: a["config"]["seed"] for a in fingerprint["analyses"] if "seed" in a["config"]},
            "batch_size": fingerprint["batch_size"], "world_size": world, "n_samples": len(dataset),
            "n_done": len(dataset) - n_skipped, "n_skipped": n_skipped, "seconds_rank0": round(elapsed, 3),
            "versions": _versions(), "tables": sorted(tables)}
    return RunResult(tables, skipped_frame.reset_index(drop=True), meta, folder)


def _versions() -> dict[str, str]:
    import transformers

    return {"vlm_lens": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "pandas": pd.__version__}
