import gzip
import struct

import numpy as np
import pytest
from helpers import gzip_with_header, make_images, write_tiny_idx

from harness.data import idx
from harness.errors import DataError


def test_round_trip_gzipped_with_named_header_and_plain(tmp_path):
    arrays = write_tiny_idx(tmp_path, num_train=30, num_test=7)
    for split in ("train", "test"):
        images, labels = idx.load_split(tmp_path, split)
        np.testing.assert_array_equal(images, arrays[split][0])
        np.testing.assert_array_equal(labels, arrays[split][1])
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28, 1)
        assert labels.dtype == np.int32


def test_any_gzip_header_reads_the_same(tmp_path):
    payload = idx.encode_labels(np.arange(10))
    for i, blob in enumerate([gzip.compress(payload, mtime=0), gzip_with_header(payload, "x"), payload]):
        (tmp_path / f"f{i}").write_bytes(blob)
        np.testing.assert_array_equal(idx.parse_labels(idx.read_bytes(tmp_path / f"f{i}")), np.arange(10))


def _images_bytes(n=3):
    return idx.encode_images(make_images(np.arange(n) % 10))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_images_bytes()[:-1], "truncated"),
        (_images_bytes() + b"\0", "trailing data"),
        (_images_bytes()[:10], "too short"),
        (struct.pack(">IIII", 0x801, 1, 28, 28) + bytes(784), "magic number 0x00000801"),
        (struct.pack(">IIII", 0x803, 1, 32, 32) + bytes(1024), "32x32"),
    ],
)
def test_bad_image_files_refused(data, match):
    with pytest.raises(DataError, match=match) as e:
        idx.parse_images(data, "bad-file")
    assert str(e.value).startswith("bad-file:") and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (idx.encode_labels(np.arange(5))[:-2], "truncated"),
        (struct.pack(">II", 0x803, 2) + bytes(2), "not an IDX label file"),
        (struct.pack(">II", 0x801, 2) + bytes([1, 12]), "label 12 at index 1"),
    ],
)
def test_bad_label_files_refused(data, match):
    with pytest.raises(DataError, match=match):
        idx.parse_labels(data, "labels")


def test_count_mismatch_between_images_and_labels(tmp_path):
    write_tiny_idx(tmp_path, num_train=20, num_test=5)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx.encode_labels(np.zeros(4)))
    with pytest.raises(DataError, match="4 labels for 5 images"):
        idx.load_split(tmp_path, "test")


def test_corrupt_gzip_and_missing_file(tmp_path):
    write_tiny_idx(tmp_path, num_train=20, num_test=5)
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:-20])
    with pytest.raises(DataError, match="gzip"):
        idx.load_split(tmp_path, "train")
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    assert idx.missing_files(tmp_path) == ["t10k-images-idx3-ubyte"]
    with pytest.raises(DataError, match="missing"):
        idx.load_split(tmp_path, "test")


def test_a_split_of_zero_items_is_refused(tmp_path):
    write_tiny_idx(tmp_path, num_train=20, num_test=0)
    idx.load_split(tmp_path, "train")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: the header announces 0 images") as e:
        idx.load_split(tmp_path, "test")
    assert "\n" not in str(e.value)
