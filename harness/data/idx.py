"""Read and validate IDX files (the MNIST file format), gzipped or not; encode arrays as IDX.

tfds' own MNIST reader skips the 16/8-byte header unchecked, so a foreign file passes and truncation shows up as
a numpy reshape error. Here every header field and the exact file length are checked, and every problem is a
``DataError`` naming the file and what is wrong with it.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from harness.errors import DataError

IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
IMAGE_SIZE = 28
NUM_CLASSES = 10

# The four standard files, keyed by (split, kind).
STANDARD_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def read_bytes(path: Path) -> bytes:
    """Returns the content of ``path``, gunzipped when it starts with the gzip magic (any gzip header)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip stream ({e})") from None


def parse_images(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parses an IDX3 image file into a uint8 array of shape (N, 28, 28, 1)."""
    if len(data) < 16:
        raise DataError(f"{name}: {len(data)} bytes is too short for an IDX image header (16 bytes)")
    magic, count, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != IMAGES_MAGIC:
        raise DataError(f"{name}: magic number {magic:#010x} is not an IDX image file (expected {IMAGES_MAGIC:#010x})")
    if (rows, cols) != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{name}: images are {rows}x{cols}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    expected = 16 + count * rows * cols
    if len(data) != expected:
        raise DataError(
            f"{name}: {len(data)} bytes, but the header announces {count} images ({expected} bytes); "
            "the file is truncated or has trailing data"
        )
    return np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, cols, 1)


def parse_labels(data: bytes, name: str = "<bytes>", num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Parses an IDX1 label file into an int32 array of shape (N,), checking labels are 0..num_classes-1 (256: any
    byte, for a dataset whose class count is still to be checked)."""
    if len(data) < 8:
        raise DataError(f"{name}: {len(data)} bytes is too short for an IDX label header (8 bytes)")
    magic, count = struct.unpack(">II", data[:8])
    if magic != LABELS_MAGIC:
        raise DataError(f"{name}: magic number {magic:#010x} is not an IDX label file (expected {LABELS_MAGIC:#010x})")
    if len(data) != 8 + count:
        raise DataError(
            f"{name}: {len(data)} bytes, but the header announces {count} labels ({8 + count} bytes); "
            "the file is truncated or has trailing data"
        )
    labels = np.frombuffer(data, np.uint8, offset=8)
    if count and labels.max() >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise DataError(f"{name}: label {labels[bad]} at index {bad} is outside 0..{num_classes - 1}")
    return labels.astype(np.int32)


def find_file(directory: Path, stem: str) -> Path | None:
    """Finds ``stem`` or ``stem.gz`` in ``directory`` (the plain file wins)."""
    for candidate in (Path(directory) / stem, Path(directory) / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def missing_files(directory: Path) -> list[str]:
    """Names of the standard IDX files absent (gzipped or not) from ``directory``."""
    return [stem for stem in STANDARD_FILES.values() if find_file(directory, stem) is None]


def load_split(directory: Path, split: str, num_classes: int = NUM_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Loads and validates one split ('train' or 'test') from the standard files in ``directory``; labels must be
    in 0..num_classes-1."""
    paths = {}
    for kind in ("images", "labels"):
        stem = STANDARD_FILES[(split, kind)]
        path = find_file(directory, stem)
        if path is None:
            raise DataError(f"{Path(directory) / stem}: missing (looked for {stem} and {stem}.gz)")
        paths[kind] = path
    images = parse_images(read_bytes(paths["images"]), str(paths["images"]))
    labels = parse_labels(read_bytes(paths["labels"]), str(paths["labels"]), num_classes)
    if len(images) != len(labels):
        raise DataError(f"{paths['labels']}: {len(labels)} labels for {len(images)} images in {paths['images'].name}")
    if not len(images):
        raise DataError(f"{paths['images']}: the header announces 0 images; the {split} split needs at least one")
    return images, labels


def encode_images(images: np.ndarray) -> bytes:
    """Encodes uint8 images of shape (N, 28, 28[, 1]) as an IDX3 file."""
    images = np.asarray(images, np.uint8).reshape(len(images), IMAGE_SIZE, IMAGE_SIZE)
    return struct.pack(">IIII", IMAGES_MAGIC, len(images), IMAGE_SIZE, IMAGE_SIZE) + images.tobytes()


def encode_labels(labels: np.ndarray) -> bytes:
    """Encodes labels as an IDX1 file."""
    labels = np.asarray(labels, np.uint8)
    return struct.pack(">II", LABELS_MAGIC, len(labels)) + labels.tobytes()
