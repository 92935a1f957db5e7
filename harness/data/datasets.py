"""MNIST, Fashion-MNIST, Kuzushiji-MNIST and the user's own MNIST-format datasets as tfds datasets that prepare and
load without TensorFlow.

The stock tfds builders need TensorFlow to prepare (``tf.io.gfile`` and PNG-encoded ``Image`` features). The
builders here subclass them — same names, download URLs, checksums and class names — but store the images as
uint8 ``Tensor`` features in ArrayRecord files, parse the IDX files with :mod:`harness.data.idx` and are read
with ``as_data_source`` (what ``tfds.data_source`` calls). They carry version 3.1.0 so that a copy prepared by
the stock builder (3.0.1, TFRecord + PNG) in the same data dir is never mistaken for one of ours.

Where the data comes from, in order: an already prepared copy in the data dir; IDX files in a directory (the
``harness data import`` command, or Debian's ``dataset-fashion-mnist`` package, found automatically); a download
by tfds when the machine is online.

The user's own datasets (``harness data import DIR --as NAME --classes …``) are builders made per name from the
description :mod:`harness.data.catalog` keeps beside them (version 1.0.0, no download source).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import shutil
import socket
import time
import urllib.parse
import zipfile
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import hashing as tfds_hashing
from tensorflow_datasets.core import utils as tfds_utils
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError
from tensorflow_datasets.image_classification import mnist as tfds_mnist

from harness import settings
from harness.data import catalog, idx
from harness.errors import DataError

DEBIAN_DIRS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}
DEBIAN_PACKAGES = {"fashion_mnist": "dataset-fashion-mnist"}
_VERSION = tfds.core.Version("3.1.0")
_IMPORTED_NOTES = {"1.0.0": "harness: imported from the user's IDX files (harness data import --as)."}
_RELEASE_NOTES = {"3.1.0": "harness: uint8 Tensor images in ArrayRecord, numpy IDX reader; no TensorFlow needed."}


class _IdxBuilderMixin:
    """What every harness builder shares: IDX files read with numpy from a dir (or the web), uint8 Tensor images
    in ArrayRecord files."""

    def __init__(self, *, idx_dir: Path | None = None, **kwargs):
        self.idx_dir = Path(idx_dir) if idx_dir else None
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _log_download_bytes(self) -> None:
        source = f"the IDX files in {self.idx_dir}" if self.idx_dir else f"a download from {self.URL}"
        print(f"preparing {self.name} {self.version} from {source} into {self.data_dir} (once)", flush=True)

    def _log_download_done(self) -> None:
        print(f"prepared {self.name} in {self.data_dir}", flush=True)

    @staticmethod
    def _features(class_names) -> tfds.features.FeaturesDict:
        return tfds.features.FeaturesDict(
            {
                "image": tfds.features.Tensor(shape=tfds_mnist.MNIST_IMAGE_SHAPE, dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=list(class_names)),
            }
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


class _StockMixin(_IdxBuilderMixin):
    """A stock tfds builder's name, URLs, checksums, description and class names, prepared without TensorFlow."""

    VERSION = _VERSION
    RELEASE_NOTES = _RELEASE_NOTES

    @tfds_utils.classproperty
    @classmethod
    def _checksums_path(cls):
        """The stock builder's registered checksums (same URLs, same files)."""
        return tfds_utils.tfds_path() / "url_checksums" / f"{cls.name}.txt"

    def _info(self) -> tfds.core.DatasetInfo:
        stock = super()._info()
        return tfds.core.DatasetInfo(
            builder=self,
            description=stock.description,
            features=self._features(stock.features["label"].names),
            supervised_keys=("image", "label"),
            homepage=stock.homepage,
            citation=stock.citation,
        )


class Mnist(_StockMixin, tfds_mnist.MNIST, skip_registration=True):
    """MNIST handwritten digits, prepared without TensorFlow."""

    name = "mnist"


class FashionMnist(_StockMixin, tfds_mnist.FashionMNIST, skip_registration=True):
    """Fashion-MNIST (Zalando article images), prepared without TensorFlow."""

    name = "fashion_mnist"


class Kmnist(_StockMixin, tfds_mnist.KMNIST, skip_registration=True):
    """Kuzushiji-MNIST (cursive Hiragana, one character per row of the syllabary), prepared without TensorFlow."""

    name = "kmnist"


BUILDERS = {b.name: b for b in (Mnist, FashionMnist, Kmnist)}  # one per name in harness.data.NAMES


class _ImportedBuilder(_IdxBuilderMixin, tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A user's MNIST-format dataset, imported from its four IDX files; a subclass per name (:func:`_imported`)."""

    name = "harness_imported"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = _IMPORTED_NOTES
    URL = None
    CLASSES: tuple[str, ...] = ()

    @tfds_utils.classproperty
    @classmethod
    def _checksums_path(cls):
        """None: nothing is downloaded, so there are no checksums (and no source folder to look for them in)."""
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.name}: an MNIST-format dataset imported by harness (harness data import --as).",
            features=self._features(self.CLASSES),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        if self.idx_dir is None:  # never downloaded: only `harness data import` prepares it
            raise DataError(f"{self.name}: no source to prepare it from; {_import_hint(self.name)}")
        return super()._split_generators(dl_manager)


@functools.lru_cache(maxsize=64)
def _imported_class(name: str, classes: tuple[str, ...]) -> type:
    """One builder class per (name, classes): tfds keeps every builder class it sees, so they are made once."""
    body = {"name": name, "CLASSES": classes, "__module__": __name__, "__doc__": f"The imported dataset {name}."}
    return type(f"Imported_{name}", (_ImportedBuilder,), body, skip_registration=True)


def _import_hint(name: str) -> str:
    return f"import it with `harness data import DIR --as {name} --classes NAME0,NAME1,…`"


@dataclasses.dataclass(frozen=True)
class Split:
    """One split in host memory: uint8 images (N, 28, 28, 1) and int32 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def builder(name: str, data_dir: str | None = None, idx_dir: Path | None = None) -> tfds.core.DatasetBuilder:
    """The harness builder for ``name``, shipped or imported into the data dir; ``data_dir`` None means tfds'
    default (``TFDS_DATA_DIR`` honoured)."""
    catalog.check_root(data_dir)
    if name in BUILDERS:
        return BUILDERS[name](data_dir=data_dir or None, idx_dir=idx_dir)
    meta = catalog.read(name, data_dir)
    if meta is None:
        raise DataError(f"unknown dataset {name!r}; allowed: {catalog.allowed_text(data_dir)}")
    return _imported_class(name, meta.classes)(data_dir=str(catalog.root(data_dir)), idx_dir=idx_dir)


def class_names(name: str, data_dir: str | None = None) -> list[str]:
    """The class names of ``name`` (digits '0'..'9' for MNIST; an imported dataset's from its data dir)."""
    return list(builder(name, data_dir).info.features["label"].names)


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


def _prepare(b: tfds.core.DatasetBuilder) -> None:
    """``b.download_and_prepare()``; a data dir that cannot be written is one line (before anything is written where
    the OS says so up front), never an ``OSError`` traceback."""
    data_dir = Path(b.data_dir).parents[1]  # DATA_DIR/NAME/VERSION
    nearest = catalog.nearest_existing(data_dir)
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise DataError(f"data dir {data_dir}: cannot write in {nearest}; {_WRITABLE}")
    try:
        b.download_and_prepare()
    except OSError as e:
        if e.filename is None:
            raise
        raise DataError(f"data dir {data_dir}: cannot write {e.filename} ({e.strerror}); {_WRITABLE}") from None


_WRITABLE = "name a folder you can write (--data-dir, config.data_dir or TFDS_DATA_DIR)"


def _validated_labels(directory: Path, num_classes: int = idx.NUM_CLASSES) -> list[np.ndarray]:
    """Validates the four IDX files in ``directory`` (before anything is written); returns the splits' labels."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory")
    missing = idx.missing_files(directory)
    if missing:
        raise DataError(f"{directory}: missing {', '.join(missing)} (each may be gzipped)")
    return [idx.load_split(directory, split, num_classes)[1] for split in ("train", "test")]


def prepare_from_dir(name: str, directory: Path, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Validates the four IDX files in ``directory`` and prepares the shipped dataset ``name`` from them."""
    if name not in BUILDERS:
        raise DataError(f"--dataset {name}: allowed: {', '.join(BUILDERS)} (import your own with --as NAME)")
    _validated_labels(directory)
    b = builder(name, data_dir, idx_dir=Path(directory))
    if b.is_prepared():
        raise DataError(f"{name} is already prepared in {b.data_dir}; remove that folder to import again")
    _prepare(b)
    return b


def _outside(labels: list[np.ndarray]) -> str:
    """`` (label 12: 1 in train, 2 in test)``: the labels beyond the models' outputs and how many examples of each
    split have them, or ''."""
    parts = []
    for value in np.unique(np.concatenate([split[split >= idx.NUM_CLASSES] for split in labels])):
        where = [
            f"{int(np.sum(split == value))} in {name}" for name, split in zip(("train", "test"), labels, strict=True)
        ]
        parts.append(f"label {value}: {', '.join(w for w in where if not w.startswith('0 '))}")
    return f" ({'; '.join(parts[:4])}{'; …' if len(parts) > 4 else ''})" if parts else ""


def import_named(
    name: str, classes: list[str] | tuple[str, ...], directory: Path, data_dir: str | None = None
) -> tfds.core.DatasetBuilder:
    """Imports the user's MNIST-format dataset in ``directory`` as ``name`` with these class names: everything is
    checked first (name, class names against the labels, each file), then the description and the tfds data are
    written under ``DATA_DIR/name``; a failed import removes the folder it created."""
    catalog.check_name(name)
    classes = catalog.check_classes(classes)
    labels = _validated_labels(directory, num_classes=256)
    highest = max(int(split.max()) for split in labels)
    catalog.check_labels(classes, highest, Path(directory), _outside(labels))
    folder = catalog.root(data_dir) / name
    if folder.exists() and not (folder / catalog.META_FILE).is_file():
        raise DataError(f"{folder} holds data harness did not import (another tfds dataset?); choose another name")
    meta = catalog.Imported(name, classes, str(Path(directory).resolve()))
    b = _imported_class(name, classes)(data_dir=str(catalog.root(data_dir)), idx_dir=Path(directory))
    if b.is_prepared():
        raise DataError(f"{name} is already imported into {folder}; remove that folder to import it again")
    fresh = not folder.exists()
    try:
        catalog.write(meta, data_dir)
        _prepare(b)
    except BaseException:
        if fresh:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return b


def ensure_prepared(name: str, data_dir: str | None = None) -> tuple[tfds.core.DatasetBuilder, str]:
    """Returns a prepared builder for ``name`` and a phrase saying where its data came from."""
    b = builder(name, data_dir)
    if b.is_prepared():
        return b, f"prepared tfds data in {b.data_dir}"
    if name not in BUILDERS:  # imported, but its import was stopped half-way
        raise DataError(f"{name} is not prepared in {b.data_dir} (an import did not finish); {_import_hint(name)}")
    debian = DEBIAN_DIRS.get(name)
    if debian is not None and not idx.missing_files(debian):
        b = prepare_from_dir(name, debian, data_dir)
        return b, f"Debian's {DEBIAN_PACKAGES[name]} files in {debian}, prepared into {b.data_dir}"
    if not _online(b.URL):
        raise DataError(no_data_message(name))
    try:
        _prepare(b)
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
    problem = settings.dir_problem(directory)
    if problem is not None:
        settings.cache_unusable("HARNESS_DATA_CACHE", directory, problem, _NO_DATA_CACHE)
        return None
    key = hashlib.sha256("|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files).encode())
    return directory / f"{b.name}-{b.version}-{split}-{key.hexdigest()[:16]}.npz"


_NO_DATA_CACHE = "decoding the splits each time"


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
    except OSError as e:  # an unwritable cache only costs the decoding next time: say so once
        settings.cache_unusable("HARNESS_DATA_CACHE", path.parent, f"cannot be written ({e.strerror})", _NO_DATA_CACHE)


def _read_cache(path: Path, count: int) -> Split | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            images, labels = f["images"], f["labels"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    ok = images.dtype == np.uint8 and images.shape == (count, *tfds_mnist.MNIST_IMAGE_SHAPE)
    ok = ok and labels.dtype == np.int32 and labels.shape == (count,)
    return Split(images, labels) if ok and np.all((labels >= 0) & (labels < idx.NUM_CLASSES)) else None


def file_positions(split: str, count: int) -> np.ndarray:
    """``positions[i]``: where example ``i`` of the split's IDX file sits in the split as prepared. tfds writes a
    split's examples ordered by a hash of their keys salted with the split's name (``disable_shuffling`` off), and
    harness's builders key the file's example ``i`` as ``i``; so the files' order is recomputed, not stored."""
    hasher = tfds_hashing.Hasher(split)
    stored = sorted(range(count), key=hasher.hash_key)  # stored[j] = the file's example at position j
    positions = np.empty(count, np.int64)
    positions[stored] = np.arange(count)
    return positions


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
