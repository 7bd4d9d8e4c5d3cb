"""Datasets: CSV / Q-Align JSON / memory tables are read as written, and every bad table is refused with the rows
or columns named; missing images are reported, never dropped from the count."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlm_lens.core.errors import VlmLensError
from vlm_lens.runs.datasets import from_csv, from_images, from_json, from_table


@pytest.fixture
def folder(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    return tmp_path


def test_csv_resolves_paths_against_its_folder(folder):
    pd.DataFrame({"image_name": ["a.png", "b.png"], "MOS": [3.5, 1.25]}).to_csv(folder / "s.csv", index=False)
    ds = from_csv(folder / "s.csv", image="image_name", score="MOS")
    assert [s.id for s in ds] == ["a.png", "b.png"] and [s.mos for s in ds] == [3.5, 1.25]
    assert [s.image for s in ds] == [folder / "a.png", folder / "b.png"]
    assert ds.name == "s" and ds.higher_is_better and ds.has_scores and len(ds.missing) == 0
    assert ds.table().columns.tolist() == ["index", "id", "image", "mos"]


@pytest.mark.parametrize("key", ["image", "img_path"])
def test_qalign_json_both_image_keys(folder, key):
    records = [{key: "a.png", "gt_score": 4.1}, {key: "c.png", "gt_score": 2.0}]
    (folder / "test_live.json").write_text(json.dumps(records))
    ds = from_json(folder / "test_live.json", higher_is_better=False)
    assert [s.mos for s in ds] == [4.1, 2.0] and [s.image for s in ds] == [folder / "a.png", folder / "c.png"]
    assert ds.higher_is_better is False and ds.describe()["higher_is_better"] is False


def test_missing_columns_are_named(folder):
    pd.DataFrame({"path": ["a.png"], "score": [1.0]}).to_csv(folder / "s.csv", index=False)
    with pytest.raises(VlmLensError, match=r"missing column\(s\) \['image', 'mos'\]; it has \['path', 'score'\]"):
        from_csv(folder / "s.csv")
    with pytest.raises(VlmLensError, match=r"missing column\(s\) \['mos'\]"):
        from_csv(folder / "s.csv", image="path")


def test_empty_tables_are_refused(folder):
    (folder / "header.csv").write_text("image,mos\n")
    with pytest.raises(VlmLensError, match="no rows"):
        from_csv(folder / "header.csv")
    (folder / "empty.csv").write_text("")
    with pytest.raises(VlmLensError, match="could not be read as CSV"):
        from_csv(folder / "empty.csv")
    (folder / "empty.json").write_text("[]")
    with pytest.raises(VlmLensError, match="missing column|no rows"):
        from_json(folder / "empty.json")
    with pytest.raises(VlmLensError, match="no such file"):
        from_csv(folder / "absent.csv")


def test_nan_and_non_numeric_scores_name_the_rows(folder):
    table = pd.DataFrame({"image": ["a.png", "b.png", "c.png"], "mos": [1.0, np.nan, "x"]})
    with pytest.raises(VlmLensError, match=r"2 missing or non-numeric score\(s\) \(NaN\), rows \[1, 2\]"):
        from_table(table, root=folder)
    assert not from_table(table, score=None, root=folder).has_scores  # a dataset without scores is fine


def test_duplicate_ids_are_refused(folder):
    table = pd.DataFrame({"image": ["a.png", "b.png", "a.png"], "mos": [1.0, 2.0, 3.0]})
    with pytest.raises(VlmLensError, match=r"1 duplicate sample ids, e.g. \['a.png'\]"):
        from_table(table, root=folder)
    ok = from_table(table.assign(key=["x", "y", "z"]), id="key", root=folder)
    assert [s.id for s in ok] == ["x", "y", "z"]


def test_missing_images_are_reported_not_dropped(folder):
    table = pd.DataFrame({"image": ["a.png", "gone.png", "b.png"], "mos": [1.0, 2.0, 3.0]})
    with pytest.warns(UserWarning, match="1 of 3 image"):
        ds = from_table(table, root=folder)
    assert len(ds) == 3
    assert ds.missing[["index", "id", "reason"]].values.tolist() == [[1, "gone.png", "no such file"]]


def test_from_images_and_fingerprint():
    images = [Image.new("RGB", (4, 4), (k, 0, 0)) for k in range(3)]
    ds = from_images(images, [1, 2, 3])
    assert [s.id for s in ds] == ["0", "1", "2"] and ds.load_image(ds[1]).getpixel((0, 0)) == (1, 0, 0)
    same = from_images([im.copy() for im in images], [1, 2, 3])
    assert ds.fingerprint() == same.fingerprint()
    changed = [im.copy() for im in images]
    changed[2].putpixel((0, 0), (9, 9, 9))
    assert from_images(changed, [1, 2, 3]).fingerprint() != ds.fingerprint()
    assert from_images(images[:2], [1, 2]).fingerprint() != ds.fingerprint()
    with pytest.raises(VlmLensError, match="3 images but 2 scores"):
        from_images(images, [1, 2])
    with pytest.raises(VlmLensError, match="NaN"):
        from_images(images, [1, float("nan"), 2])
    with pytest.raises(VlmLensError, match="no samples"):
        from_images([], [])
