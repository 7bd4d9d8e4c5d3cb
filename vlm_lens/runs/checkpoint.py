"""The on-disk side of a run: atomic writes, per-rank checkpoints, the run's fingerprint.

Why a module of its own: "killed at any point, started again, identical result" is a property of the file
protocol, not of the loop. The protocol, per rank (``state/rank-R-of-W/``):

1. every ``checkpoint_every`` samples, the rows each reducer emitted since the last checkpoint are written to
   ``rows/<analysis>.<table>/part-<seq>.parquet`` (temp file + ``os.replace``);
2. then ``state.safetensors`` is replaced atomically: the reducers' sums as tensors, and in its metadata (JSON)
   the checkpoint number ``seq``, the number of batches done and the skipped samples. This replace is the
   commit: a kill before it leaves the previous checkpoint intact, and the part files it left behind (numbered
   above the committed ``seq``) are deleted when the run resumes.

``run.json`` at the top holds the run's fingerprint (model, dataset, analyses, batch size, world size) and its
status; a run that finds a different fingerprint in its folder refuses to touch it. Nothing is pickled: tensors
go to safetensors, tables to parquet (and CSV for people), everything else to JSON.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors import safe_open
from safetensors.torch import save_file

from ..core.errors import DamagedFileError, VlmLensError
from ..tracing.fingerprint import model_fingerprint

__all__ = ["RankState", "atomic_write", "describe_differences", "model_fingerprint", "read_parts", "write_table"]

FORMAT_VERSION = 1


def atomic_write(path: Path, write: Any, *, durable: bool = True) -> None:
    """Call ``write(temp_path)``, then move the temp file over ``path`` (same folder, so the move is atomic).

    The move alone makes the write all-or-nothing for a killed process; ``durable`` also flushes the file to disk
    first (``fsync``), so that it survives a power loss — for state, not for copies made for people."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(temp))
        if durable:
            with open(temp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=1, default=str)))


def write_table(frame: pd.DataFrame, stem: Path, *, csv: bool = True) -> None:
    """``stem.parquet`` (exact, durable) and, with ``csv``, ``stem.csv`` (for people), each written atomically."""
    atomic_write(stem.parent / f"{stem.name}.parquet", lambda p: frame.to_parquet(p, index=False))
    if csv:
        atomic_write(stem.parent / f"{stem.name}.csv", lambda p: frame.to_csv(p, index=False), durable=False)


def read_parts(folder: Path) -> pd.DataFrame:
    """Concatenate the parquet parts of ``folder`` in file-name order (types of all-null parts promoted)."""
    files = sorted(folder.glob("part-*.parquet"))
    if not files:
        return pd.DataFrame()
    try:
        table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")
    except (OSError, pa.ArrowException) as err:
        raise DamagedFileError(f"the checkpointed rows in {str(folder)!r} are damaged ({type(err).__name__}: {err}). "
                               "Start the run again with overwrite=True (it deletes only what the run wrote), or in a "
                               "new folder.", str(folder)) from None
    return table.to_pandas()


def describe_differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Human-readable differences between two JSON-like values (``key.path: old -> new``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += describe_differences(old.get(key, "<absent>"), new.get(key, "<absent>"),
                                        f"{where}.{key}" if where else str(key))
        return out
    if isinstance(old, list) and isinstance(new, list):
        if len(old) == len(new):
            return [d for k, (a, b) in enumerate(zip(old, new)) for d in describe_differences(a, b, f"{where}[{k}]")]
        return [f"{where}: {_short(old)} -> {_short(new)}"]
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def _short(values: list) -> str:
    """A list in a few words: the names of its entries when they have one (analyses), else its length."""
    names = [v.get("name") for v in values if isinstance(v, dict)]
    return repr(names) if names and all(names) else f"{len(values)} entries"


class RankState:
    """One rank's checkpoints in ``folder`` (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seq = 0
        self.done_batches = 0
        self.skipped: list[dict[str, Any]] = []

    @property
    def state_file(self) -> Path:
        return self.folder / "state.safetensors"

    def load(self, reducers: list[Any]) -> None:
        """Restore the last committed checkpoint into ``reducers`` and drop parts written after it."""
        if self.state_file.exists():
            try:
                with safe_open(str(self.state_file), "pt") as handle:
                    info = json.loads((handle.metadata() or {})["state"])
                    tensors = {k: handle.get_tensor(k) for k in handle.keys()}
            except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for every kind of damage
                raise self._damaged(err) from None
            if not isinstance(info, dict) or info.get("format_version") != FORMAT_VERSION:
                raise VlmLensError(f"{self.state_file}: checkpoint format "
                                   f"{info.get('format_version') if isinstance(info, dict) else info!r} is not "
                                   f"{FORMAT_VERSION}; start the run in a new folder.")
            try:
                self.seq, self.done_batches, self.skipped = int(info["seq"]), int(info["done_batches"]), \
                    list(info["skipped"])
                for reducer in reducers:
                    prefix = f"{reducer.name}/"
                    reducer.load_state({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
                raise self._damaged(err) from None
        for part in (self.folder / "rows").glob("*/part-*.parquet"):
            if int(part.stem.split("-")[1]) > self.seq:
                part.unlink()
        for temp in self.folder.rglob(".*.tmp"):  # a write cut short by a kill
            temp.unlink()

    def _damaged(self, err: BaseException) -> DamagedFileError:
        return DamagedFileError(f"the checkpoint {str(self.state_file)!r} is damaged ({type(err).__name__}: {err}). "
                                "Start the run again with overwrite=True (it deletes only what the run wrote), or in a "
                                "new folder.", str(self.state_file))

    def commit(self, reducers: list[Any]) -> None:
        """Write the rows emitted since the last checkpoint, then atomically replace the state (the commit)."""
        seq = self.seq + 1
        for reducer in reducers:
            for table, frame in reducer.take_rows().items():
                target = self.folder / "rows" / f"{reducer.name}.{table}" / f"part-{seq:06d}.parquet"
                atomic_write(target, lambda p, f=frame: f.to_parquet(p, index=False))
        tensors = {f"{r.name}/{k}": v for r in reducers for k, v in r.state().items()}
        info = {"format_version": FORMAT_VERSION, "seq": seq, "done_batches": self.done_batches,
                "skipped": self.skipped}
        atomic_write(self.state_file, lambda p: save_file(tensors, str(p), metadata={"state": json.dumps(info)}))
        self.seq = seq

    def rows(self, reducer: Any) -> dict[str, pd.DataFrame]:
        """All committed rows of ``reducer``, per table."""
        return {table: read_parts(self.folder / "rows" / f"{reducer.name}.{table}") for table in reducer.tables}
