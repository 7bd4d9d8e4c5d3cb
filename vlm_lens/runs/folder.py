"""A run folder on disk: which folders a run may use, what ``overwrite`` may delete, and reading results back.

Why a module of its own: the folder of a run is named by the user (``out=``), so it can be any folder — one that
holds their own files, or the current folder. A run must never cost them a file. The rules:

- ``out=`` is a new or empty folder, or a folder that holds a vlm_lens run (its ``run.json``). A folder holding
  other files (hidden ones aside) is refused: the run would write ``results/`` and ``state/`` among them, and a
  later ``overwrite=True`` would have to tell its files from theirs.
- ``overwrite=True`` deletes only what a run wrote: ``run.json``, the ``state/rank-R-of-W/`` folders, and in
  ``results/`` the tables the run listed (``meta.json``'s ``tables``; for runs written before that list, the files
  named after its analyses), ``skipped.*`` and ``meta.json``. Anything else stays; ``results/`` and ``state/``
  are removed only when nothing else is left in them.
- Reading a run back returns only the tables the run wrote (a parquet file someone else put in ``results/`` is
  not a table of the run), and a damaged file is named (:class:`~vlm_lens.core.errors.DamagedFileError`).

Example:
    >>> check_out(Path("runs/one-stage"))            # new, empty, or a run folder: fine  # doctest: +SKIP
    >>> discard(Path("runs/one-stage"), ["quality"])  # what overwrite=True deletes          # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ..core.errors import DamagedFileError, RunMismatchError, VlmLensError
from .checkpoint import describe_differences, write_json

__all__ = ["RUN_FILE", "check_out", "claim", "discard", "read_json", "read_results", "read_run_info", "stored_info"]

#: The file that makes a folder a run folder: the run's fingerprint and status.
RUN_FILE = "run.json"
#: What a run writes in ``results/`` besides its tables.
_ALWAYS = ("meta.json", "skipped.parquet", "skipped.csv")


def check_out(folder: Path) -> None:
    """Refuse ``out=folder`` when it is a file, or a folder holding files but no run."""
    if folder.exists() and not folder.is_dir():
        raise VlmLensError(f"out={str(folder)!r} is a file, not a folder. Name a folder for the run.")
    if folder.is_dir() and not (folder / RUN_FILE).exists():
        foreign = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        if foreign:
            raise VlmLensError(f"out={str(folder)!r} already holds files ({', '.join(foreign[:5])}"
                               f"{', ...' if len(foreign) > 5 else ''}) but no {RUN_FILE}: it is not a vlm_lens run "
                               "folder, and a run would write results/ and state/ among your files. Pass a new or "
                               "empty folder, e.g. out='runs/one-stage'.")


def read_json(path: Path) -> Any:
    """The JSON in ``path``; a file that is not readable JSON is a :class:`DamagedFileError` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedFileError(f"{str(path)!r} is damaged: not readable JSON ({type(err).__name__}: {err}). Run again "
                               "with overwrite=True (it deletes only what the run wrote), or into a new folder.",
                               str(path)) from None


def read_run_info(folder: Path, name: str = RUN_FILE) -> dict[str, Any]:
    """``run.json`` (or ``name``) of ``folder``: ``{"status": ..., "fingerprint": {...}}``."""
    info = read_json(folder / name)
    if not isinstance(info, dict) or not isinstance(info.get("fingerprint"), dict):
        raise DamagedFileError(f"{str(folder / name)!r} is damaged: expected a JSON object with the run's "
                               f"fingerprint, got {type(info).__name__}. Run again with overwrite=True (it deletes "
                               "only what the run wrote), or into a new folder.", str(folder / name))
    return info


def stored_info(folder: Path, name: str, fingerprint: dict, held: str, discarded: str) -> dict[str, Any] | None:
    """The job info ``name`` in ``folder`` when it is this job's (same ``fingerprint``), None when there is none.

    Raises:
        RunMismatchError: the folder holds ``held`` (e.g. "a run of a different model or with different arguments")
            whose fingerprint differs; resuming would mix the two. The message lists the differences and says how
            to discard it (``discarded``: what ``overwrite=True`` discards).
    """
    if not (folder / name).exists():
        return None
    existing = read_run_info(folder, name)
    if existing.get("fingerprint") != fingerprint:
        differences = describe_differences(existing.get("fingerprint"), fingerprint)
        raise RunMismatchError(f"out={str(folder)!r} holds {held}; resuming would mix results. Differences (stored "
                               f"-> now): {'; '.join(differences[:8])}. Pass a new out= folder, or overwrite=True to "
                               f"discard {discarded}.", str(folder), differences)
    return existing


def claim(folder: Path, name: str, fingerprint: dict) -> None:
    """Create ``folder`` and mark the job of ``fingerprint`` as running there (``name``: its info file)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / name, {"status": "running", "fingerprint": fingerprint})
    except OSError as err:
        raise VlmLensError(f"out={str(folder)!r} is not writable ({err.strerror or err}). Pass a folder you can "
                           "write to.") from None


def discard(folder: Path, analyses: Iterable[str]) -> list[Path]:
    """Delete what a run wrote in ``folder`` (see the module docstring); ``analyses`` are the names of the analyses
    of the run about to start (the stored run's names are read from its files when they are readable). Returns the
    deleted paths."""
    names = set(analyses) | _stored_analyses(folder)
    listed = _listed_tables(folder / "results")
    deleted: list[Path] = []
    results = folder / "results"
    if results.is_dir():
        for path in results.iterdir():
            if path.is_file() and _written_by_run(path.name, names, listed):
                path.unlink()
                deleted.append(path)
        _remove_if_empty(results)
    state = folder / "state"
    if state.is_dir():
        for rank in state.glob("rank-*-of-*"):
            if rank.is_dir():
                shutil.rmtree(rank)
                deleted.append(rank)
        _remove_if_empty(state)
    if (folder / RUN_FILE).exists():
        (folder / RUN_FILE).unlink()
        deleted.append(folder / RUN_FILE)
    return deleted


def read_results(folder: Path) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, dict[str, Any], Path]:
    """``(tables, skipped, meta, results folder)`` of the finished run in ``folder`` (or ``folder/results``)."""
    results = folder / "results" if (folder / "results" / "meta.json").exists() else folder
    if not (results / "meta.json").exists():
        raise VlmLensError(f"{str(folder)!r} holds no finished run (no results/meta.json); run it with "
                           "vl.run(..., out=...) first.")
    meta = read_json(results / "meta.json")
    if not isinstance(meta, dict) or not isinstance(meta.get("analyses"), list) or not isinstance(
            meta.get("dataset"), dict):
        raise DamagedFileError(f"{str(results / 'meta.json')!r} is not the meta.json of a vlm_lens run (it lacks the "
                               "analyses and the dataset); point at the folder a run wrote.",
                               str(results / "meta.json"))
    listed = meta.get("tables")
    if isinstance(listed, list):
        names = [str(n) for n in listed]
    else:  # runs written before the list: the tables named after the run's analyses
        analyses = {a.get("name") for a in meta["analyses"] if isinstance(a, dict)}
        names = [p.stem for p in sorted(results.glob("*.parquet")) if p.stem.split(".")[0] in analyses
                 and "." in p.stem]
    tables = {name: _read_table(results / f"{name}.parquet") for name in names}
    return tables, _read_table(results / "skipped.parquet"), meta, results


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DamagedFileError(f"{str(path)!r} is missing: the run's results are incomplete. Run again with "
                               "overwrite=True, or into a new folder.", str(path))
    try:
        return pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise DamagedFileError(f"{str(path)!r} is damaged: not a readable parquet file ({type(err).__name__}: "
                               f"{err}). Run again with overwrite=True, or into a new folder.", str(path)) from None


def _stored_analyses(folder: Path) -> set[str]:
    """Names of the analyses of the run stored in ``folder``, from whichever of its files can be read."""
    names: set[str] = set()
    for path, keys in ((folder / RUN_FILE, ("fingerprint", "analyses")), (folder / "results" / "meta.json",
                                                                          ("analyses",))):
        try:
            value: Any = json.loads(path.read_text(encoding="utf-8"))
            for key in keys:
                value = value[key]
            names |= {str(a["name"]) for a in value}
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return names


def _listed_tables(results: Path) -> set[str] | None:
    try:
        listed = json.loads((results / "meta.json").read_text(encoding="utf-8"))["tables"]
        return {str(n) for n in listed}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _written_by_run(name: str, analyses: set[str], listed: set[str] | None) -> bool:
    if name in _ALWAYS or (name.startswith(".") and name.endswith(".tmp")):  # .tmp: an atomic write cut short
        return True
    stem, _, suffix = name.rpartition(".")
    if suffix not in ("parquet", "csv"):
        return False
    if listed is not None:
        return stem in listed
    return "." in stem and stem.split(".")[0] in analyses


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
