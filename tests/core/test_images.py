"""Image inputs: every mode becomes 8-bit RGB by stated rules; unreadable inputs fail with the path named."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vlm_lens.core.errors import ImageError
from vlm_lens.core.images import load_image


def test_modes_are_converted_not_rejected(tmp_path):
    grey = Image.fromarray(np.full((4, 5), 200, np.uint8), "L")
    assert load_image(grey).getpixel((0, 0)) == (200, 200, 200)
    transparent = Image.new("RGBA", (3, 3), (10, 20, 30, 0))
    assert load_image(transparent).getpixel((1, 1)) == (255, 255, 255)  # composited on white
    half = Image.new("RGBA", (3, 3), (0, 0, 0, 128))
    assert load_image(half).getpixel((1, 1)) == (127, 127, 127)
    deep = Image.fromarray(np.array([[0, 257 * 128], [65535, 32767]], np.uint16))
    assert deep.mode.startswith("I;16")
    rgb = load_image(deep)  # rescaled from 16 bits, not clipped at 255
    assert [rgb.getpixel(xy)[0] for xy in [(0, 0), (1, 0), (0, 1), (1, 1)]] == [0, 128, 255, 127]
    cmyk = Image.new("CMYK", (2, 2), (0, 0, 0, 0))
    assert load_image(cmyk).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (2, 2))
    assert load_image(palette).mode == "RGB"
    path = tmp_path / "deep.png"
    deep.save(path)
    assert load_image(path).getpixel((1, 0)) == (128, 128, 128)


def test_arrays():
    assert load_image(np.zeros((3, 4, 3), np.uint8)).size == (4, 3)
    assert load_image(np.ones((3, 4), np.float32)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.full((2, 2, 4), 255, np.uint8)).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ImageError, match=r"\(3, 4, 5\)"):
        load_image(np.zeros((3, 4, 5), np.uint8))
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        load_image(np.full((2, 2, 3), 3.0))


def test_unreadable_files_name_the_path(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png.*0 bytes"):
        load_image(empty)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match="corrupt.jpg.*could not be decoded"):
        load_image(corrupt)
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "ok.png")
    truncated.write_bytes((tmp_path / "ok.png").read_bytes()[:60])
    with pytest.raises(ImageError, match="truncated.png"):
        load_image(truncated)
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="got int"):
        load_image(3)
