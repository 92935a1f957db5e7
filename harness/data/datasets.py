"""MNIST and Fashion-MNIST as tfds datasets that prepare and load without TensorFlow.

The stock tfds builders need TensorFlow to prepare (``tf.io.gfile`` and PNG-encoded ``Image`` features). The
builders here subclass them — same names, download URLs, checksums and class names — but store the images as
uint8 ``Tensor`` features in ArrayRecord files, parse the IDX files with :mod:`harness.data.idx` and are read
with ``as_data_source`` (what ``tfds.data_source`` calls). They carry version 3.1.0 so that a copy prepared by
the stock builder (3.0.1, TFRecord + PNG) in the same data dir is never mistaken for one of ours.

Where the data comes from, in order: an already prepared copy in the data dir; IDX files in a directory (the
``harness data import`` command, or Debian's ``dataset-fashion-mnist`` package, found automatically); a download
by tfds when the machine is online.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import time
import urllib.parse
import zipfile
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError
from tensorflow_datasets.image_classification import mnist as tfds_mnist

from harness import settings
from harness.data import idx
from harness.errors import DataError

DEBIAN_DIRS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}
DEBIAN_PACKAGES = {"fashion_mnist": "dataset-fashion-mnist"}
_VERSION = tfds.core.Version("3.1.0")
_RELEASE_NOTES = {"3.1.0": "harness: uint8 Tensor images in ArrayRecord, numpy IDX reader; no TensorFlow needed."}


class _IdxBuilderMixin:
    """Replaces the TensorFlow-bound parts of the stock MNIST builders; reads IDX files from a dir or the web."""

    VERSION = _VERSION
    RELEASE_NOTES = _RELEASE_NOTES

    def __init__(self, *, idx_dir: Path | None = None, **kwargs):
        self.idx_dir = Path(idx_dir) if idx_dir else None
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    @tfds_utils.classproperty
    @classmethod
    def _checksums_path(cls):
        """The stock builder's registered checksums (same URLs, same files)."""
        return tfds_utils.tfds_path() / "url_checksums" / f"{cls.name}.txt"

    def _log_download_bytes(self) -> None:
        source = f"the IDX files in {self.idx_dir}" if self.idx_dir else f"a download from {self.URL}"
        print(f"preparing {self.name} {self.version} from {source} into {self.data_dir} (once)", flush=True)

    def _log_download_done(self) -> None:
        print(f"prepared {self.name} in {self.data_dir}", flush=True)

    def _info(self) -> tfds.core.DatasetInfo:
        stock = super()._info()
        return tfds.core.DatasetInfo(
            builder=self,
            description=stock.description,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=tfds_mnist.MNIST_IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=stock.features["label"].names),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=stock.homepage,
            citation=stock.citation,
        )

    def _split_generators(self, dl_manager):
        if self.idx_dir is not None:
            files = {key: idx.find_file(self.idx_dir, stem) for key, stem in idx.STANDARD_FILES.items()}
        else:
            urls = {key: urllib.parse.urljoin(self.URL, f"{stem}.gz") for key, stem in idx.STANDARD_FILES.items()}
            files = dl_manager.download(urls)
        return {
            split: self._generate_examples(files[(split, "images")], files[(split, "labels")])
            for split in ("train", "test")
        }

    def _generate_examples(self, images_path, labels_path):
        images = idx.parse_images(idx.read_bytes(images_path), str(images_path))
        labels = idx.parse_labels(idx.read_bytes(labels_path), str(labels_path))
        if len(images) != len(labels):
            raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images")
        for index in range(len(images)):
            yield index, {"image": images[index], "label": labels[index]}


class Mnist(_IdxBuilderMixin, tfds_mnist.MNIST, skip_registration=True):
    """MNIST handwritten digits, prepared without TensorFlow."""

    name = "mnist"


class FashionMnist(_IdxBuilderMixin, tfds_mnist.FashionMNIST, skip_registration=True):
    """Fashion-MNIST (Zalando article images), prepared without TensorFlow."""

    name = "fashion_mnist"


BUILDERS = {b.name: b for b in (Mnist, FashionMnist)}  # one per name in harness.data.NAMES (tests/test_datasets.py)


@dataclasses.dataclass(frozen=True)
class Split:
    """One split in host memory: uint8 images (N, 28, 28, 1) and int32 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def builder(name: str, data_dir: str | None = None, idx_dir: Path | None = None) -> tfds.core.DatasetBuilder:
    """The harness builder for ``name``; ``data_dir`` None means tfds' default (``TFDS_DATA_DIR`` honoured)."""
    if name not in BUILDERS:
        raise DataError(f"unknown dataset {name!r}; allowed: {', '.join(sorted(BUILDERS))}")
    return BUILDERS[name](data_dir=data_dir or None, idx_dir=idx_dir)


def class_names(name: str) -> list[str]:
    """The class names of ``name`` (digits '0'..'9' for MNIST)."""
    return list(builder(name).info.features["label"].names)


def _online(url: str, timeout: float = 3.0) -> bool:
    """Whether the download site answers; ``HARNESS_OFFLINE=1`` says no without asking."""
    if settings.load().offline:
        return False
    parts = urllib.parse.urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def no_data_message(name: str) -> str:
    """The one line telling the user the ways to get ``name``."""
    ways = [f"`harness data import DIR --dataset {name}` with the four IDX files in DIR"]
    if name in DEBIAN_PACKAGES:
        ways.insert(0, f"`apt-get install {DEBIAN_PACKAGES[name]}`")
    return (
        f"no {name} data: not prepared in the data dir and the download site is unreachable; "
        "get it with " + " or ".join(ways)
    )


def prepare_from_dir(name: str, directory: Path, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Validates the four IDX files in ``directory`` and prepares the tfds dataset from them."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory")
    missing = idx.missing_files(directory)
    if missing:
        raise DataError(f"{directory}: missing {', '.join(missing)} (each may be gzipped)")
    for split in ("train", "test"):  # Validate everything before tfds writes anything.
        idx.load_split(directory, split)
    b = builder(name, data_dir, idx_dir=directory)
    if b.is_prepared():
        raise DataError(f"{name} is already prepared in {b.data_dir}; remove that folder to import again")
    b.download_and_prepare()
    return b


def ensure_prepared(name: str, data_dir: str | None = None) -> tuple[tfds.core.DatasetBuilder, str]:
    """Returns a prepared builder for ``name`` and a phrase saying where its data came from."""
    b = builder(name, data_dir)
    if b.is_prepared():
        return b, f"prepared tfds data in {b.data_dir}"
    debian = DEBIAN_DIRS.get(name)
    if debian is not None and not idx.missing_files(debian):
        b = prepare_from_dir(name, debian, data_dir)
        return b, f"Debian's {DEBIAN_PACKAGES[name]} files in {debian}, prepared into {b.data_dir}"
    if not _online(b.URL):
        raise DataError(no_data_message(name))
    try:
        b.download_and_prepare()
    except (OSError, ValueError, tfds.download.DownloadError, NonMatchingChecksumError) as e:
        reason = " ".join(str(e).split())[:300]
        raise DataError(f"download of {name} failed ({type(e).__name__}: {reason}); {no_data_message(name)}") from None
    return b, f"downloaded by tfds, prepared into {b.data_dir}"


def _decode_split(b: tfds.core.DatasetBuilder, split: str) -> Split:
    source = b.as_data_source(split=split)
    examples = source.__getitems__(list(range(len(source))))
    images = np.stack([np.asarray(e["image"], np.uint8) for e in examples])
    labels = np.asarray([e["label"] for e in examples], np.int32)
    return Split(images.reshape(-1, *tfds_mnist.MNIST_IMAGE_SHAPE), labels)


def _cache_path(b: tfds.core.DatasetBuilder, split: str) -> Path | None:
    """Where the decoded ``split`` is cached: in ``HARNESS_DATA_CACHE`` (default ``~/.cache/harness/data``; ``off``
    disables), named after the split's ArrayRecord files (path, size, mtime), so a re-prepared split misses it."""
    directory = settings.load().data_cache
    files = sorted(Path(b.data_dir).glob(f"{b.name}-{split}.array_record*"))
    if directory is None or not files:
        return None
    key = hashlib.sha256("|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files).encode())
    return directory / f"{b.name}-{b.version}-{split}-{key.hexdigest()[:16]}.npz"


def _write_cache(path: Path, data: Split, dataset: str, split: str) -> None:
    """Writes ``path`` atomically, then removes the other entries of ``dataset``'s ``split`` (any version or key)
    and temporary files a killed writer left over an hour ago: the cache holds one entry per dataset and split."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, images=data.images, labels=data.labels)
        tmp.replace(path)
        stale = [p for p in path.parent.glob(f"{dataset}-*-{split}-*.npz") if p != path]
        stale += [
            p for p in path.parent.glob(f".{dataset}-*-{split}-*.tmp.npz") if time.time() - p.stat().st_mtime > 3600
        ]
        for old in stale:
            old.unlink(missing_ok=True)
    except OSError:
        pass  # an unwritable cache only costs the decoding next time


def _read_cache(path: Path, count: int) -> Split | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            images, labels = f["images"], f["labels"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    ok = images.dtype == np.uint8 and images.shape == (count, *tfds_mnist.MNIST_IMAGE_SHAPE)
    ok = ok and labels.dtype == np.int32 and labels.shape == (count,)
    return Split(images, labels) if ok and np.all((labels >= 0) & (labels < idx.NUM_CLASSES)) else None


def load_split(b: tfds.core.DatasetBuilder, split: str) -> Split:
    """Reads a whole split through ``as_data_source`` into host arrays, once: later calls read the decoded arrays
    from a cache file (47 MB for Fashion-MNIST's train split: ~0.1 s instead of ~2 s of per-record decoding). The
    cache keeps one file per dataset and split: writing a new one (another data dir, a re-prepared split, another
    version) removes the old one, so it holds at most four files (55 MB for Fashion-MNIST's two splits)."""
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; allowed: train, test")
    path = _cache_path(b, split)
    if path is not None and path.is_file():
        cached = _read_cache(path, len(b.as_data_source(split=split)))
        if cached is not None:
            return cached
    data = _decode_split(b, split)
    if path is not None:
        _write_cache(path, data, b.name, split)
    return data
