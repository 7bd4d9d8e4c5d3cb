"""Image-quality datasets: (image, MOS) tables from CSV, JSON (Q-Align's format) or memory.

Why a module of its own: the numbers of the paper are correlations over hundreds of images, and two silent
failures spoil them without an error — a sample that quietly falls out of the count, and a DMOS set (LIVE, CSIQ:
*lower* is better) correlated with the wrong sign. So a :class:`Dataset` checks its table when it is built
(required columns, empty tables, NaN scores, duplicate ids: each refused with the rows named), reports images
that are missing on disk without dropping them (a run lists them as skipped, with the reason), and carries
``higher_is_better`` to every correlation computed on it.

Images are read lazily, one batch at a time, so a dataset of 10k paths costs nothing until it is run.

Example:
    >>> import vlm_lens as vl                                              # doctest: +SKIP
    >>> ds = vl.datasets.from_csv("koniq.csv", image="image_name", score="MOS", root="koniq/1024x768")  # doctest: +SKIP
    >>> ds = vl.datasets.from_json("q-align/test_live.json", root="data", higher_is_better=False)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from ..core.checks import as_bool, as_folder
from ..core.errors import VlmLensError
from ..core.images import load_image

__all__ = ["Dataset", "Sample", "from_csv", "from_images", "from_json", "from_table"]

#: Image-path keys of Q-Align's JSON files, in the order they are looked for.
QALIGN_IMAGE_KEYS = ("image", "img_path")


@dataclass(frozen=True)
class Sample:
    """One row of a dataset.

    Attributes:
        index: Row number in the dataset (0-based); results are sorted by it.
        id: Unique name of the sample (the image path by default).
        image: A path, or an in-memory image.
        mos: The subjective score, or None when the dataset has none.
    """

    index: int
    id: str
    image: Any = None
    mos: float | None = None


@dataclass
class Dataset:
    """An ordered list of samples with the meaning of their scores.

    Attributes:
        samples: The samples, ``samples[i].index == i``.
        higher_is_better: False for DMOS sets; correlations are then computed against ``-mos``.
        name: What the dataset is called in results (default: the file name).
        missing: Samples whose image file did not exist when the dataset was built: ``index, id, image, reason``.
            They stay in the dataset; a run reports them as skipped.
    """

    samples: list[Sample]
    higher_is_better: bool = True
    name: str = ""
    missing: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["index", "id", "image", "reason"]))

    def __post_init__(self) -> None:
        self.higher_is_better = as_bool(self.higher_is_better, "higher_is_better")
        if not self.samples:
            raise VlmLensError(f"dataset {self.name or ''!r} has no samples; a run needs at least one image.")
        if [s.index for s in self.samples] != list(range(len(self.samples))):
            raise VlmLensError("Dataset.samples must be numbered 0..n-1 in order (Sample.index).")
        ids = pd.Series([s.id for s in self.samples])
        duplicated = sorted(set(ids[ids.duplicated()]))
        if duplicated:
            raise VlmLensError(f"{len(duplicated)} duplicate sample ids, e.g. {duplicated[:5]}; ids must be unique "
                               "(results are aligned on them). Pass id= naming a unique column, or de-duplicate.")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    def __iter__(self):
        return iter(self.samples)

    @property
    def has_scores(self) -> bool:
        return all(s.mos is not None for s in self.samples)

    def load_image(self, sample: Sample) -> Image.Image:
        """The sample's image as RGB; raises :class:`~vlm_lens.errors.ImageError` if it cannot be read."""
        return load_image(sample.image, argument=f"sample {sample.id!r}")

    def table(self) -> pd.DataFrame:
        """``index, id, image, mos`` (image: the path, or the type of an in-memory image)."""
        return pd.DataFrame({"index": [s.index for s in self.samples], "id": [s.id for s in self.samples],
                             "image": [_describe(s.image) for s in self.samples],
                             "mos": [np.nan if s.mos is None else s.mos for s in self.samples]})

    def fingerprint(self) -> str:
        """sha256 of ids, images (paths, or pixels of in-memory images), scores and ``higher_is_better``."""
        h = hashlib.sha256(f"higher_is_better={self.higher_is_better}\n".encode())
        for s in self.samples:
            h.update(f"{s.id}\x00{s.mos!r}\x00".encode())
            if isinstance(s.image, Image.Image):
                h.update(s.image.tobytes())
            elif isinstance(s.image, np.ndarray):
                h.update(np.ascontiguousarray(s.image).tobytes())
            else:
                h.update(str(s.image).encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        """JSON-able summary recorded in run metadata."""
        return {"name": self.name, "n": len(self), "higher_is_better": self.higher_is_better,
                "has_scores": self.has_scores, "missing": int(len(self.missing)), "fingerprint": self.fingerprint()}


def from_table(table: pd.DataFrame, *, image: str = "image", score: str | None = "mos", id: str | None = None,
               root: str | Path | None = None, higher_is_better: bool = True, name: str = "",
               source: str = "table") -> Dataset:
    """A dataset from a DataFrame with an image-path column and (optionally) a score column.

    Args:
        table: One row per image.
        image: Column of image paths (relative paths are resolved against ``root``).
        score: Column of MOS / DMOS values; None for a dataset without scores.
        id: Column of unique sample ids; default the image column as written in the table.
        root: Folder the image paths are relative to (default: as written, i.e. the working directory).
        higher_is_better: False for DMOS sets (LIVE, CSIQ).
        name: Name recorded in results.
        source: Where the table came from, for error messages.

    Raises:
        VlmLensError: A required column is missing (the message lists the columns there are), the table is empty,
            scores are NaN or not numbers, or ids repeat (the rows are named).

    Example:
        >>> import pandas as pd
        >>> from_table(pd.DataFrame({"image": ["a.png"], "mos": [3.5]})).samples[0]
        Sample(index=0, id='a.png', image=PosixPath('a.png'), mos=3.5)
    """
    if not isinstance(table, pd.DataFrame):
        raise VlmLensError(f"table: expected a pandas DataFrame, got {type(table).__name__}. Build one first, e.g. "
                           "pd.DataFrame(records), or read a file with from_csv / from_json.")
    higher_is_better = as_bool(higher_is_better, "higher_is_better")
    if root is not None:
        root = as_folder(root, "root")
    if len(table) == 0:
        raise VlmLensError(f"{source}: the table has no rows; a dataset needs at least one image.")
    needed = [c for c in (image, score, id) if c is not None]
    absent = [c for c in needed if c not in table.columns]
    if absent:
        raise VlmLensError(f"{source}: missing column(s) {absent}; it has {list(table.columns)}. Name the columns "
                           f"with image=..., score=... (None for no scores), id=....")
    paths = table[image]
    if paths.isna().any() or (paths.astype(str).str.strip() == "").any():
        rows = table.index[paths.isna() | (paths.astype(str).str.strip() == "")].tolist()
        raise VlmLensError(f"{source}: column {image!r} is empty in rows {rows[:10]}; every row needs an image path.")
    scores: list[float | None] = [None] * len(table)
    if score is not None:
        flags = table.index[table[score].map(lambda v: isinstance(v, (bool, np.bool_)))].tolist()
        if flags:
            raise VlmLensError(f"{source}: column {score!r} holds True/False in rows {flags[:10]}; a score is a "
                               "number (MOS / DMOS). Check that score= names the score column.")
        values = pd.to_numeric(table[score], errors="coerce")
        bad = table.index[values.isna()].tolist()
        if bad:
            shown = {r: table.at[r, score] for r in bad[:5]}
            raise VlmLensError(f"{source}: column {score!r} has {len(bad)} missing or non-numeric score(s) (NaN), "
                               f"rows {bad[:10]} (values {shown}). Drop those rows first (pass a filtered table "
                               "to vl.datasets.from_table), or fix the file.")
        infinite = table.index[~np.isfinite(values.to_numpy(float))].tolist()
        if infinite:
            raise VlmLensError(f"{source}: column {score!r} has {len(infinite)} infinite score(s), rows "
                               f"{infinite[:10]}; a score must be a finite number (it would drop out of every "
                               "correlation). Fix those rows or drop them.")
        scores = [float(v) for v in values]
    if id is not None and (table[id].isna().any() or (table[id].astype(str).str.strip() == "").any()):
        rows = table.index[table[id].isna() | (table[id].astype(str).str.strip() == "")].tolist()
        raise VlmLensError(f"{source}: column {id!r} is empty in rows {rows[:10]}; every sample needs an id.")
    ids = table[id].astype(str).tolist() if id is not None else paths.astype(str).tolist()
    base = Path(root) if root is not None else None
    samples, missing = [], []
    for k, (raw, mos, sample_id) in enumerate(zip(paths.astype(str), scores, ids)):
        path = Path(raw)
        if base is not None and not path.is_absolute():
            path = base / path
        samples.append(Sample(k, sample_id, path, mos))
        if not path.is_file():
            missing.append({"index": k, "id": sample_id, "image": str(path), "reason": "no such file"})
    frame = pd.DataFrame(missing, columns=["index", "id", "image", "reason"])
    if missing:
        warnings.warn(f"{source}: {len(missing)} of {len(samples)} image(s) do not exist, e.g. "
                      f"{frame.image.iloc[0]!r}; they stay in the dataset and a run reports them as skipped "
                      "(Dataset.missing lists them).", stacklevel=3)
    return Dataset(samples, higher_is_better=higher_is_better, name=name, missing=frame)


def from_csv(path: str | Path, *, image: str = "image", score: str | None = "mos", id: str | None = None,
             root: str | Path | None = None, higher_is_better: bool = True, name: str | None = None,
             **read_csv: Any) -> Dataset:
    """A dataset from a CSV file (see :func:`from_table`); ``root`` defaults to the CSV's folder.

    Example:
        >>> ds = from_csv("koniq10k_scores.csv", image="image_name", score="MOS")   # doctest: +SKIP
    """
    path = _existing(path)
    try:
        table = pd.read_csv(path, **read_csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise VlmLensError(f"{str(path)!r} could not be read as CSV ({err}).") from None
    except (TypeError, ValueError) as err:  # arguments pandas refuses (passed through **read_csv)
        raise VlmLensError(f"{str(path)!r}: pandas.read_csv refused the arguments {read_csv} ({err}).") from None
    return from_table(table, image=image, score=score, id=id, root=root if root is not None else path.parent,
                      higher_is_better=higher_is_better, name=name if name is not None else path.stem,
                      source=str(path))


def from_json(path: str | Path, *, image: str | None = None, score: str | None = "gt_score", id: str | None = None,
              root: str | Path | None = None, higher_is_better: bool = True, name: str | None = None) -> Dataset:
    """A dataset from a JSON list of records, by default Q-Align's ``[{"image"|"img_path": ..., "gt_score": ...}]``.

    Args:
        image: Key of the image path; default ``"image"``, else ``"img_path"`` (Q-Align uses both).
        score: Key of the score (Q-Align: ``"gt_score"``); None for none.
        root: Folder image paths are relative to; default the JSON file's folder.
        Others: as :func:`from_table`.

    Example:
        >>> ds = from_json("test_csiq.json", root="playground/data", higher_is_better=False)   # doctest: +SKIP
    """
    path = _existing(path)
    try:
        records = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise VlmLensError(f"{str(path)!r} is not valid JSON ({err}).") from None
    if isinstance(records, dict):  # {"annotations": [...]}-style wrappers with one list inside
        lists = [v for v in records.values() if isinstance(v, list)]
        records = lists[0] if len(lists) == 1 else records
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise VlmLensError(f"{str(path)!r}: expected a JSON list of objects (one per image), got "
                           f"{type(records).__name__}.")
    if not records:
        raise VlmLensError(f"{str(path)!r} holds an empty list: it has no rows (no images); a dataset needs at "
                           "least one image.")
    table = pd.DataFrame.from_records(records)
    if image is None:
        image = next((k for k in QALIGN_IMAGE_KEYS if k in table.columns), QALIGN_IMAGE_KEYS[0])
    return from_table(table, image=image, score=score, id=id, root=root if root is not None else path.parent,
                      higher_is_better=higher_is_better, name=name if name is not None else path.stem,
                      source=str(path))


def from_images(images: Sequence[Any], scores: Sequence[float] | None = None, *, ids: Sequence[str] | None = None,
                higher_is_better: bool = True, name: str = "images") -> Dataset:
    """A dataset from images in memory (PIL images, arrays or paths) and optional scores.

    Example:
        >>> from PIL import Image
        >>> ds = from_images([Image.new("RGB", (8, 8))], [4.0])
        >>> ds[0].id, ds[0].mos
        ('0', 4.0)
    """
    if isinstance(images, (str, bytes, Path, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim < 4) \
            or not hasattr(images, "__iter__"):
        shape = f" of shape {images.shape}" if hasattr(images, "shape") else ""
        raise VlmLensError(f"images: expected a list of images (paths, PIL images or arrays), got one "
                           f"{type(images).__name__}{shape}. Wrap a single image in a list: from_images([image]).")
    higher_is_better = as_bool(higher_is_better, "higher_is_better")
    images = list(images)
    if scores is not None:
        if isinstance(scores, (str, bytes)) or not hasattr(scores, "__iter__"):
            raise VlmLensError(f"scores: expected a list of numbers, one per image, got {type(scores).__name__}.")
        scores = list(scores)
        if len(scores) != len(images):
            raise VlmLensError(f"{len(images)} images but {len(scores)} scores; pass one score per image.")
        bad = [k for k, s in enumerate(scores) if s is None or isinstance(s, (bool, np.bool_))
               or not isinstance(s, (int, float, np.number)) or not math.isfinite(float(s))]
        if bad:
            raise VlmLensError(f"scores at positions {bad[:10]} are NaN, infinite or not numbers (values "
                               f"{[scores[k] for k in bad[:5]]}); drop those images or fix the scores.")
    ids = [str(i) for i in ids] if ids is not None else [str(k) for k in range(len(images))]
    if len(ids) != len(images):
        raise VlmLensError(f"{len(images)} images but {len(ids)} ids; pass one id per image.")
    samples = [Sample(k, ids[k], img, None if scores is None else float(scores[k])) for k, img in enumerate(images)]
    return Dataset(samples, higher_is_better=higher_is_better, name=name)


def _existing(path: str | Path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise VlmLensError(f"path={path!r}: expected the path of a file (str or pathlib.Path), got "
                           f"{type(path).__name__}.")
    path = Path(path)
    if path.is_dir():
        raise VlmLensError(f"{str(path)!r} is a folder; pass the path of the table file inside it (a .csv or .json).")
    if not path.is_file():
        raise VlmLensError(f"{str(path)!r}: no such file. Check the path (relative paths are resolved against "
                           f"{Path.cwd()}).")
    return path


def _describe(image: Any) -> str:
    return str(image) if isinstance(image, (str, Path)) else type(image).__name__
