"""harness.images: the user's pictures and .npy arrays in the datasets' format, and every bad file as one line."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from harness import images
from harness.errors import DataError, HarnessError


def draw_stroke(path, size=(60, 80), background="white", ink="black", mode="RGB"):
    """A digit-like vertical stroke with a short bar across the top (a '7'-ish shape), saved with Pillow."""
    img = Image.new(mode, size, background)
    d = ImageDraw.Draw(img)
    w, h = size
    d.line([(w // 2, h // 5), (w // 2, 4 * h // 5)], fill=ink, width=max(2, w // 10))
    d.line([(w // 4, h // 5), (w // 2, h // 5)], fill=ink, width=max(2, w // 10))
    img.save(path)
    return path


def converted(path, invert="auto", box=20):
    return images.to_dataset_format(images.load(path), invert, box)


def assert_dataset_like(a):
    assert a.shape == (28, 28, 1) and a.dtype == np.uint8
    border = np.concatenate([a[0, :, 0], a[-1, :, 0], a[:, 0, 0], a[:, -1, 0]])
    assert border.max() == 0 and a.max() == 255  # dark background, bright strokes


def test_dark_stroke_on_white_is_inverted(tmp_path):
    path = draw_stroke(tmp_path / "seven.png")
    assert images.should_invert(images.load(path), "auto")
    a = converted(path)
    assert_dataset_like(a)
    rows, _ = np.nonzero(a[:, :, 0] > 64)
    assert rows.max() - rows.min() + 1 == 20  # the longer side (height) fitted to MNIST's 20-pixel box


def test_bright_stroke_on_black_is_not_inverted_under_auto(tmp_path):
    path = draw_stroke(tmp_path / "seven.jpg", background="black", ink="white", mode="L")
    gray = images.load(path)
    assert not images.should_invert(gray, "auto")
    assert_dataset_like(images.to_dataset_format(gray, "auto"))
    np.testing.assert_array_equal(images.to_dataset_format(gray, "auto"), images.to_dataset_format(gray, "no"))


def test_invert_yes_and_no_override_auto():
    light = np.full((10, 10), 255.0)
    assert images.should_invert(light, "auto") and not images.should_invert(light, "no")
    assert images.should_invert(np.zeros((10, 10)), "yes")
    with pytest.raises(HarnessError, match="allowed: auto, yes, no"):
        images.should_invert(light, "maybe")


def test_wide_image_keeps_its_aspect_ratio(tmp_path):
    img = Image.new("L", (300, 60), 0)
    ImageDraw.Draw(img).rectangle([10, 10, 289, 49], fill=255)  # a 280×40 bar: 7 to 1
    img.save(tmp_path / "wide.png")
    for box in (20, 28):
        a = converted(tmp_path / "wide.png", box=box)[:, :, 0]
        rows, cols = np.nonzero(a > 64)
        width, height = cols.max() - cols.min() + 1, rows.max() - rows.min() + 1
        assert width == box and abs(height - box / 7) <= 1
        assert abs((rows.min() + rows.max()) / 2 - 13.5) <= 1  # centred


def test_28x28_image_goes_through_as_it_is():
    a = np.random.default_rng(0).integers(0, 120, (28, 28)).astype(np.float32)
    np.testing.assert_array_equal(images.to_dataset_format(a, "no")[:, :, 0], a.astype(np.uint8))
    np.testing.assert_array_equal(images.to_dataset_format(a, "yes")[:, :, 0], (255 - a).astype(np.uint8))


def test_transparent_png_is_composited_over_white(tmp_path):
    img = Image.new("RGBA", (50, 50), (0, 0, 0, 0))  # transparent black: would be all black without compositing
    ImageDraw.Draw(img).ellipse([10, 10, 40, 40], outline=(0, 0, 0, 255), width=4)
    img.save(tmp_path / "ring.png")
    gray = images.load(tmp_path / "ring.png")
    assert gray[0, 0] == 255 and gray[25, 11] == 0
    a = converted(tmp_path / "ring.png")
    assert_dataset_like(a)
    assert a[14, 14, 0] == 0  # the ring's hole stays dark


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((8, 8), 1028, np.uint16)).save(tmp_path / "deep.png")
    np.testing.assert_allclose(images.load(tmp_path / "deep.png"), 4.0)


@pytest.mark.parametrize(
    ("array", "expected_max"),
    [
        (np.full((30, 40), 200, np.uint8), 200),
        (np.full((30, 40, 1), 0.5, np.float32), 127.5),  # [0, 1] floats are scaled
        (np.full((30, 40), 200.0), 200),  # [0, 255] floats are not
    ],
)
def test_npy_arrays_that_are_accepted(tmp_path, array, expected_max):
    np.save(tmp_path / "a.npy", array)
    gray = images.load(tmp_path / "a.npy")
    assert gray.shape == (30, 40) and gray.dtype == np.float32 and gray.max() == pytest.approx(expected_max)


def png_of_size(width, height):
    """A PNG whose header says width×height (Pillow itself refuses to write an empty image)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def write_bad(tmp_path, kind):
    """A file (or not) of the given bad kind; the .npy kinds get a .npy name, the others none that helps."""
    path = tmp_path / (f"{kind}.npy" if kind.endswith("_npy") else f"{kind}.png")
    whole_png, whole_npy = tmp_path / "whole.png", tmp_path / "whole.npy"
    draw_stroke(whole_png)
    np.save(whole_npy, np.zeros((28, 28), np.uint8))
    writers = {
        "text": lambda: path.write_text("not a picture\n"),
        "empty": lambda: path.write_bytes(b""),
        "zero_png": lambda: path.write_bytes(png_of_size(0, 0)),
        "truncated_png": lambda: path.write_bytes(whole_png.read_bytes()[:120]),
        "directory": path.mkdir,
        "missing": lambda: None,
        "pickle_npy": lambda: np.save(path, np.array([[{"x": 1}]], dtype=object), allow_pickle=True),
        "truncated_npy": lambda: path.write_bytes(whole_npy.read_bytes()[:200]),
        "zero_npy": lambda: np.save(path, np.zeros((0, 0), np.uint8)),
        "rgb_npy": lambda: np.save(path, np.zeros((5, 5, 3), np.uint8)),
    }
    writers[kind]()
    return path


BAD_FILES = {
    "text": "not an image Pillow can read",
    "empty": "empty file",
    "zero_png": "not an image Pillow can read",
    "truncated_png": "damaged image file",
    "directory": "is a directory",
    "missing": "no such file",
    "pickle_npy": "needs pickle",
    "truncated_npy": "not a readable .npy file",
    "zero_npy": "empty image (0×0 pixels)",
    "rgb_npy": "shape (5, 5, 3)",
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_file_is_one_line_data_error(tmp_path, kind):
    path = write_bad(tmp_path, kind)
    with pytest.raises(HarnessError) as e:
        images.load(path)
    message = str(e.value)
    assert isinstance(e.value, DataError) and "\n" not in message
    assert message.startswith(f"{path}: ") and BAD_FILES[kind] in message


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.zeros((5, 5), np.int64), "dtype int64"),
        (np.zeros((5,), np.uint8), "shape (5,)"),
        (np.full((5, 5), 300.0), "values from 300 to 300"),
        (np.full((5, 5), -1.0), "values from -1 to -1"),
        (np.full((5, 5), np.nan, np.float32), "NaN"),
        (np.zeros((0, 7), np.float32), "empty image (7×0 pixels)"),
    ],
)
def test_npy_of_wrong_shape_dtype_or_range(tmp_path, array, fragment):
    np.save(tmp_path / "a.npy", array)
    with pytest.raises(DataError) as e:
        images.load(tmp_path / "a.npy")
    assert fragment in str(e.value) and "\n" not in str(e.value)
    if "empty" not in fragment:
        assert "uint8, or of floats in [0, 1] or [0, 255]" in str(e.value)
