"""Bad datasets: tables, files and in-memory lists that would give a wrong correlation (a mis-signed direction, an
infinite score dropped without a word, a single image iterated as pixels) or a generic Python error are refused
with the argument, column or rows named. Fuzzed: any table of scores either becomes a dataset holding exactly its
finite scores, or is refused."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from refusal import Case, check, params, refuses

from vlm_lens.core.errors import VlmLensError
from vlm_lens.runs.datasets import Dataset, Sample, from_csv, from_images, from_json, from_table

TABLE = pd.DataFrame({"image": ["a.png", "b.png"], "mos": [3.5, 1.0]})


def _write(name: str, text: str | bytes):
    def apply(ctx):
        path = ctx.tmp / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path
    return apply


def _table(name: str, names, table=TABLE, **kwargs):
    def build(ctx):
        with warnings.catch_warnings():  # the images of TABLE do not exist: not what these cases are about
            warnings.simplefilter("ignore", UserWarning)
            return from_table(table, **kwargs)
    return Case(f"table-{name}", build, names)


def _csv(name: str, content, names, **kwargs):
    return Case(f"csv-{name}", lambda ctx: from_csv(_write("s.csv", content)(ctx), **kwargs), names)


def _json(name: str, content, names, **kwargs):
    return Case(f"json-{name}", lambda ctx: from_json(_write("s.json", content)(ctx), **kwargs), names)


def _images(name: str, names, images=lambda: [Image.new("RGB", (4, 4))] * 2, **kwargs):
    return Case(f"images-{name}", lambda ctx: from_images(images(), **kwargs), names)


CASES = [
    # from_table
    _table("a-dict", ["table: expected a pandas DataFrame, got dict"], table={"image": ["a.png"], "mos": [1.0]}),
    _table("a-list", ["table: expected a pandas DataFrame, got list"], table=[{"image": "a.png", "mos": 1.0}]),
    _table("none", ["table: expected a pandas DataFrame, got NoneType"], table=None),
    _table("boolean-scores", ["column 'mos' holds True/False in rows [0, 1]"], table=TABLE.assign(mos=[True, False])),
    _table("direction-as-text", ["higher_is_better='False'", "True or False"], higher_is_better="False"),
    _table("direction-as-number", ["higher_is_better=0"], higher_is_better=0),
    _table("direction-none", ["higher_is_better=None"], higher_is_better=None),
    _table("root-a-number", ["root=3", "got int"], root=3),
    _table("root-empty", ["root=''"], root=""),
    _table("missing-image-column", ["missing column(s) ['path']", "it has ['image', 'mos']"], image="path"),
    _table("missing-score-column", ["missing column(s) ['MOS']"], score="MOS"),
    _table("missing-id-column", ["missing column(s) ['name']"], id="name"),
    _table("no-rows", ["no rows"], table=TABLE.iloc[:0]),
    _table("no-rows-no-columns", ["no rows"], table=pd.DataFrame()),
    _table("empty-image-cell", ["column 'image' is empty in rows [1]"], table=TABLE.assign(image=["a.png", " "])),
    _table("missing-image-cell", ["column 'image' is empty in rows [0]"], table=TABLE.assign(image=[None, "b.png"])),
    _table("nan-score", ["1 missing or non-numeric score(s) (NaN), rows [1]"], table=TABLE.assign(mos=[1.0, np.nan])),
    _table("text-score", ["non-numeric", "rows [0]", "'good'"], table=TABLE.assign(mos=["good", 2.0])),
    _table("infinite-score", ["column 'mos' has 1 infinite score(s), rows [0]"], table=TABLE.assign(mos=[np.inf, 1.0])),
    _table("minus-infinite-score", ["infinite score(s), rows [1]"], table=TABLE.assign(mos=[1.0, -np.inf])),
    _table("infinite-score-as-text", ["infinite score(s)"], table=TABLE.assign(mos=["inf", "2"])),
    _table("duplicate-ids", ["1 duplicate sample ids", "'a.png'"], table=TABLE.assign(image=["a.png", "a.png"])),
    _table("ids-equal-as-text", ["duplicate sample ids", "'1'"], table=TABLE.assign(key=[1, "1"]), id="key"),
    _table("empty-id-cell", ["column 'key' is empty in rows [1]"], table=TABLE.assign(key=["x", None]), id="key"),
    # from_csv
    Case("csv-a-folder", lambda ctx: from_csv(ctx.tmp), ["is a folder", "the table file inside it"]),
    Case("csv-absent", lambda ctx: from_csv(ctx.tmp / "absent.csv"), ["absent.csv': no such file"]),
    Case("csv-path-a-number", lambda ctx: from_csv(7), ["path=7", "got int"]),
    _csv("empty-file", "", ["could not be read as CSV"]),
    _csv("header-only", "image,mos\n", ["no rows"]),
    _csv("binary", b"\xff\xfe\x00\x01garbage", ["could not be read as CSV"]),
    _csv("wrong-separator", "image;mos\na.png;1\n", ["missing column(s) ['image', 'mos']", "['image;mos']"]),
    _csv("bad-read-csv-argument", "image,mos\na.png,1\n", ["read_csv refused", "nrows"], nrows=-3),
    _csv("direction-as-text", "image,mos\na.png,1\n", ["higher_is_better='no'"], higher_is_better="no"),
    _csv("infinite-score", "image,mos\na.png,inf\nb.png,2\n", ["infinite score(s), rows [0]"]),
    # from_json
    _json("empty-list", "[]", ["holds an empty list", "no rows"]),
    _json("a-string", '"hello"', ["expected a JSON list of objects", "got str"]),
    _json("a-list-of-numbers", "[1, 2]", ["expected a JSON list of objects", "got list"]),
    _json("two-lists", '{"a": [], "b": []}', ["expected a JSON list of objects", "got dict"]),
    _json("not-json", '[{"image": "a.png", ', ["is not valid JSON"]),
    _json("not-utf8", b"\xff\xfe[]", ["is not valid JSON"]),
    _json("without-score-key", '[{"image": "a.png"}]', ["missing column(s) ['gt_score']"]),
    _json("infinite-score", '[{"image": "a.png", "gt_score": Infinity}]', ["infinite score(s)"]),
    Case("json-a-folder", lambda ctx: from_json(ctx.tmp), ["is a folder"]),
    # from_images
    _images("a-single-image", ["expected a list of images", "got one Image", "from_images([image])"],
            images=lambda: Image.new("RGB", (4, 4))),
    _images("a-single-path", ["got one str"], images=lambda: "photo.jpg"),
    _images("a-single-array", ["got one ndarray of shape (4, 4, 3)"], images=lambda: np.zeros((4, 4, 3), np.uint8)),
    _images("a-number", ["got one int"], images=lambda: 3),
    _images("no-images", ["has no samples"], images=lambda: []),
    _images("scores-of-another-count", ["2 images but 3 scores"], scores=[1.0, 2.0, 3.0]),
    _images("nan-score", ["scores at positions [1]", "nan"], scores=[1.0, float("nan")]),
    _images("infinite-score", ["scores at positions [0]", "inf"], scores=[float("inf"), 1.0]),
    _images("text-score", ["scores at positions [0]", "'3'"], scores=["3", 1.0]),
    _images("bool-score", ["scores at positions [0, 1]"], scores=[True, False]),
    _images("none-score", ["scores at positions [1]"], scores=[1.0, None]),
    _images("scores-a-number", ["scores: expected a list of numbers", "got float"], scores=3.0),
    _images("ids-of-another-count", ["2 images but 1 ids"], ids=["a"]),
    _images("duplicate-ids", ["duplicate sample ids", "'a'"], ids=["a", "a"]),
    _images("direction-as-text", ["higher_is_better='True'"], higher_is_better="True"),
    # Dataset itself
    Case("dataset-direction-as-text", lambda ctx: Dataset([Sample(0, "a")], higher_is_better="false"),
         ["higher_is_better='false'"]),
    Case("dataset-unnumbered", lambda ctx: Dataset([Sample(1, "a")]), ["numbered 0..n-1"]),
    Case("dataset-empty", lambda ctx: Dataset([], name="koniq"), ["dataset 'koniq' has no samples"]),
]


@pytest.mark.parametrize("case", params(CASES))
def test_refused(case, ctx):
    check(case, ctx)


def test_numpy_booleans_and_scores_are_their_values():
    ds = from_images([Image.new("RGB", (4, 4))] * 3, np.array([1.0, 2.5, 4.0]), higher_is_better=np.bool_(False))
    assert ds.higher_is_better is False and [s.mos for s in ds] == [1.0, 2.5, 4.0]
    assert all(type(s.mos) is float for s in ds)


def test_a_refused_table_names_every_bad_row_it_shows():
    table = pd.DataFrame({"image": [f"{k}.png" for k in range(6)], "mos": [1, np.inf, 2, "x", -np.inf, 3]})
    refuses(lambda: from_table(table), ["1 missing or non-numeric score(s) (NaN), rows [3]", "'x'"])
    finite = table.assign(mos=[1, np.inf, 2, 2.5, -np.inf, 3])
    refuses(lambda: from_table(finite), ["2 infinite score(s), rows [1, 4]"])


_cells = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                   st.sampled_from(["3.5", "inf", "-inf", "nan", "", " ", "x", "1e3", "NaN"]), st.none(),
                   st.booleans())


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_cells, min_size=1, max_size=8))
def test_fuzzed_scores_become_exactly_their_finite_values_or_are_refused(scores):
    table = pd.DataFrame({"image": [f"img{k}.png" for k in range(len(scores))], "mos": pd.Series(scores,
                                                                                               dtype=object)})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the images do not exist: said once per table
            ds = from_table(table, root="/nonexistent-root")
    except Exception as err:  # noqa: BLE001 - the check is that it is the library's error, naming the column
        assert isinstance(err, VlmLensError) and "'mos'" in str(err), repr(err)
        return
    expected = [float(s) for s in scores]  # every accepted cell is a finite number written as itself
    assert [s.mos for s in ds] == expected and all(np.isfinite(expected))
    assert len(ds) == len(scores) and len(ds.missing) == len(scores)
