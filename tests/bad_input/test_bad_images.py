"""Bad images: every file, object or array that is not a usable picture is refused with an ImageError naming the
argument — never turned into a black, white or empty picture. Fuzzed: any array either becomes an RGB image of
its own size whose pixels follow the documented conversion, or is refused."""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
import torch
from conftest import PROMPT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from refusal import Case, check, params, refuses

import vlm_lens as vl
from vlm_lens.core.errors import ImageError
from vlm_lens.core.images import load_image


def _file(ctx, name: str, data: bytes):
    path = ctx.tmp / name
    path.write_bytes(data)
    return path


def _png(ctx, name: str = "ok.png"):
    path = ctx.tmp / name
    Image.new("RGB", (20, 10), (10, 20, 30)).save(path)
    return path


def _truncated(ctx):
    data = _png(ctx).read_bytes()
    return _file(ctx, "cut.png", data[: len(data) // 2])


@functools.lru_cache(maxsize=1)
def _bomb_bytes() -> bytes:
    """A 400 M pixel PNG of 50 kB: over twice PIL's default limit, where PIL refuses instead of warning."""
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb(ctx):
    return _file(ctx, "bomb.png", _bomb_bytes())


def _image(name: str, image, names, model=False):
    """load_image(image) refused; with ``model``, the same through vl.trace (the model must be left as it was)."""
    if model:
        return Case(f"trace-{name}", lambda ctx: vl.trace(ctx.model, image(ctx), PROMPT), names, ImageError,
                    model=True)
    return Case(name, lambda ctx: load_image(image(ctx), argument="picture"), ["picture", *names], ImageError)


CASES = [
    _image("missing-file", lambda ctx: ctx.tmp / "nope.jpg", ["no such file", "nope.jpg"]),
    _image("missing-file-str", lambda ctx: str(ctx.tmp / "nope.jpg"), ["no such file"]),
    _image("directory", lambda ctx: ctx.tmp, ["is a directory"]),
    _image("empty-file", lambda ctx: _file(ctx, "empty.jpg", b""), ["empty file"]),
    _image("garbage-png", lambda ctx: _file(ctx, "bad.png", b"\x89PNG\r\n\x1a\n garbage"), ["could not be decoded"]),
    _image("text-as-jpg", lambda ctx: _file(ctx, "notes.jpg", b"hello, not a picture"), ["could not be decoded"]),
    _image("truncated-png", _truncated, ["could not be decoded", "cut.png"]),
    _image("decompression-bomb", _bomb, ["bomb.png", "MAX_IMAGE_PIXELS"]),
    _image("nan-float-array", lambda ctx: np.full((8, 8, 3), np.nan), ["NaN or infinite"]),
    _image("one-nan-pixel", lambda ctx: np.where(np.arange(192).reshape(8, 8, 3) == 5, np.nan, 0.5),
           ["1 NaN or infinite"]),
    _image("inf-float-array", lambda ctx: np.full((8, 8), np.inf, dtype=np.float32), ["NaN or infinite"]),
    _image("float-above-one", lambda ctx: np.full((8, 8, 3), 255.0), ["[0, 1]", "255"]),
    _image("negative-float", lambda ctx: np.full((8, 8, 3), -0.5), ["[0, 1]"]),
    _image("bool-array", lambda ctx: np.ones((8, 8, 3), dtype=bool), ["dtype bool"]),
    _image("int64-array", lambda ctx: np.ones((8, 8, 3), dtype=np.int64), ["dtype int64"]),
    _image("complex-array", lambda ctx: np.ones((8, 8, 3), dtype=np.complex64), ["dtype complex64"]),
    _image("zero-height-array", lambda ctx: np.zeros((0, 8, 3), dtype=np.uint8), ["no pixels"]),
    _image("zero-width-gray-array", lambda ctx: np.zeros((8, 0), dtype=np.uint8), ["no pixels"]),
    _image("channels-first", lambda ctx: np.zeros((3, 8, 8), dtype=np.uint8), ["(3, 8, 8)", "channels-last"]),
    _image("batch-array", lambda ctx: np.zeros((2, 8, 8, 3), dtype=np.uint8), ["(2, 8, 8, 3)"]),
    _image("five-channels", lambda ctx: np.zeros((8, 8, 5), dtype=np.uint8), ["(8, 8, 5)"]),
    _image("one-d-array", lambda ctx: np.zeros(12, dtype=np.uint8), ["(12,)"]),
    _image("zero-size-pil", lambda ctx: Image.new("RGB", (0, 5)), ["0 x 5", "no pixels"]),
    _image("float-pil-with-nan", lambda ctx: Image.fromarray(np.full((4, 4), np.nan, dtype=np.float32)),
           ["NaN or infinite"]),
    _image("torch-tensor", lambda ctx: torch.zeros(3, 8, 8), ["got Tensor"]),
    _image("bytes", lambda ctx: _png(ctx).read_bytes(), ["got bytes"]),
    _image("int", lambda ctx: 3, ["got int"]),
    _image("missing-file", lambda ctx: ctx.tmp / "nope.jpg", ["images[0]", "no such file", "nope.jpg"], model=True),
    _image("empty-file", lambda ctx: _file(ctx, "empty.jpg", b""), ["images[0]", "empty file", "empty.jpg"],
           model=True),
    _image("corrupt-file", lambda ctx: _file(ctx, "corrupt.png", b"\x89PNG\r\n\x1a\n garbage"),
           ["images[0]", "could not be decoded", "corrupt.png"], model=True),
    _image("nan-array", lambda ctx: np.full((8, 8, 3), np.nan), ["images[0]", "NaN"], model=True),
    _image("empty-array", lambda ctx: np.zeros((0, 0, 3), dtype=np.uint8), ["images[0]", "no pixels"], model=True),
    Case("trace-second-image-of-a-list", lambda ctx: vl.trace(ctx.model, [ctx.image, "gone.png"], "<image><image> "
                                                               "compare"), ["images[0][1]", "gone.png"], ImageError,
         model=True),
    Case("trace-bad-image-in-a-batch", lambda ctx: vl.trace(ctx.model, [ctx.image, np.full((4, 4), np.nan)],
                                                            [PROMPT, PROMPT]), ["images[1]", "NaN"], ImageError,
         model=True),
]


@pytest.mark.parametrize("case", params(CASES))
def test_refused(case, ctx):
    check(case, ctx)


def test_the_bomb_limit_is_pil_s_own(tmp_path, monkeypatch):
    """The refusal is PIL's limit, not ours: a user who trusts the file raises it and the image is read."""
    path = tmp_path / "big.png"
    Image.new("L", (3000, 1000), 7).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 3 M pixels is then over twice the limit
    refuses(lambda: load_image(path), ["big.png", "MAX_IMAGE_PIXELS"], ImageError)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000_000)
    assert load_image(path).getpixel((0, 0)) == (7, 7, 7)


def _expected_rgb(array: np.ndarray) -> np.ndarray:
    """The conversion the module documents, written out independently: floats in [0, 1] -> round(x * 255),
    uint16 -> round(x / 65535 * 255), gray -> three equal channels, alpha composited on white."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if np.issubdtype(array.dtype, np.floating):
        array = np.round(array.astype(np.float64) * 255.0)
    elif array.dtype == np.uint16:
        array = np.round(array.astype(np.float64) / 65535.0 * 255.0)
    array = array.astype(np.float64)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.shape[-1] == 4:
        alpha = array[..., 3:] / 255.0
        array = array[..., :3] * alpha + 255.0 * (1 - alpha)
    return array


arrays = st.one_of(
    hnp.arrays(st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int32, np.bool_]),
               st.tuples(st.integers(0, 6), st.integers(0, 6)).flatmap(
                   lambda hw: st.sampled_from([hw, (*hw, 1), (*hw, 3), (*hw, 4), (*hw, 2), (3, *hw)])),
               elements=None),
    hnp.arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 5), st.just(3)),
               elements=st.floats(allow_nan=True, allow_infinity=True, width=64)),
    hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 5), st.sampled_from([1, 3, 4])),
               elements=st.floats(0, 1, width=32)),
)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(arrays)
def test_fuzzed_arrays_are_converted_as_documented_or_refused(array):
    try:
        image = load_image(array, argument="fuzzed")
    except ImageError as err:
        assert "fuzzed" in str(err)
        return
    h, w = array.shape[:2]
    assert image.mode == "RGB" and image.size == (w, h) and h > 0 and w > 0
    assert np.isfinite(array.astype(np.float64)).all()
    got = np.asarray(image, dtype=np.float64)
    assert np.abs(got - _expected_rgb(array)).max() <= 1.0  # compositing rounds once more


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300), st.sampled_from(["x.png", "x.jpg", "x.gif", "x.bmp", "x"]))
def test_fuzzed_files_are_images_or_refused(tmp_path, data, name):
    path = tmp_path / name
    path.write_bytes(data)
    try:
        image = load_image(path)
    except ImageError as err:
        assert name in str(err)
    else:
        assert image.mode == "RGB" and image.width > 0 and image.height > 0
