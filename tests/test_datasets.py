from pathlib import Path

import numpy as np
import pytest
from helpers import write_tiny_idx

from harness.data import datasets
from harness.errors import DataError


def _sorted_pairs(images, labels):
    keys = [img.tobytes() + bytes([lab]) for img, lab in zip(images, labels, strict=True)]
    return sorted(keys)


def test_import_then_load_gives_the_files_content(tiny_idx_dir, tiny_data_dir):
    from harness.data import idx

    b = datasets.builder("fashion_mnist", tiny_data_dir)
    assert b.is_prepared() and b.version == "3.1.0"
    for split in ("train", "test"):
        loaded = datasets.load_split(b, split)
        images, labels = idx.load_split(tiny_idx_dir, split)
        assert loaded.images.dtype == np.uint8 and loaded.images.shape == images.shape
        assert _sorted_pairs(loaded.images, loaded.labels) == _sorted_pairs(images, labels)


def test_file_positions_recover_the_idx_files_order(tiny_idx_dir, tiny_data_dir):
    """Issue 22 item 10: tfds stores a split in hashed-key order; ``file_positions`` maps the files' order to it,
    so `predict --index I` shows the I-th image of the files the user imported."""
    from harness.data import idx

    b = datasets.builder("fashion_mnist", tiny_data_dir)
    for split in ("train", "test"):
        loaded = datasets.load_split(b, split)
        images, labels = idx.load_split(tiny_idx_dir, split)
        assert not np.array_equal(loaded.labels, labels)  # tfds did reorder them: the positions are needed
        positions = datasets.file_positions(split, len(loaded))
        np.testing.assert_array_equal(loaded.images[positions], images)
        np.testing.assert_array_equal(loaded.labels[positions], labels)


def test_prepare_does_not_import_tensorflow(tiny_data_dir):
    import sys

    datasets.load_split(datasets.builder("mnist", tiny_data_dir), "test")
    assert "tensorflow" not in sys.modules


def test_builders_keep_stock_names_urls_and_class_names():
    from tensorflow_datasets.image_classification import mnist as stock

    assert datasets.Mnist.URL == stock.MNIST.URL and datasets.FashionMnist.URL == stock.FashionMNIST.URL
    assert datasets.Kmnist.URL == stock.KMNIST.URL == "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"
    assert datasets.class_names("fashion_mnist")[0] == "T-shirt/top"
    assert datasets.class_names("mnist") == [str(i) for i in range(10)]
    assert datasets.class_names("kmnist") == ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]
    for builder, stock_builder in ((datasets.FashionMnist, stock.FashionMNIST), (datasets.Kmnist, stock.KMNIST)):
        urls = builder.url_infos  # the stock builder's registered checksums, one per file
        assert len(urls) == 4 and all(u.startswith(stock_builder.URL) for u in urls)


def test_ensure_prepared_reuses_prepared_data(tiny_data_dir):
    b, source = datasets.ensure_prepared("mnist", tiny_data_dir)
    assert b.is_prepared() and source.startswith("prepared tfds data in")


def test_no_source_is_one_line_naming_both_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "DEBIAN_DIRS", {})
    monkeypatch.setattr(datasets, "_online", lambda url, timeout=3.0: False)
    with pytest.raises(DataError) as e:
        datasets.ensure_prepared("fashion_mnist", str(tmp_path))
    message = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in message and "harness data import" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []  # nothing half-made in the data dir


def test_debian_dir_is_found_and_prepared(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    write_tiny_idx(debian, num_train=40, num_test=10)
    monkeypatch.setattr(datasets, "DEBIAN_DIRS", {"fashion_mnist": debian})
    b, source = datasets.ensure_prepared("fashion_mnist", str(tmp_path / "tfds"))
    assert "dataset-fashion-mnist" in source and len(datasets.load_split(b, "train")) == 40


def test_import_refuses_bad_files_and_writes_nothing(tmp_path):
    src = tmp_path / "src"
    write_tiny_idx(src, num_train=20, num_test=5)
    (src / "t10k-labels-idx1-ubyte").write_bytes((src / "t10k-labels-idx1-ubyte").read_bytes()[:-1])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: .*truncated"):
        datasets.prepare_from_dir("mnist", src, str(tmp_path / "tfds"))
    assert not (tmp_path / "tfds").exists()


def test_unknown_dataset_lists_shipped_and_imported(tmp_path, tiny_idx_dir):
    with pytest.raises(DataError, match=r"allowed: mnist, fashion_mnist, kmnist \(shipped\); none imported into"):
        datasets.builder("cifar10", str(tmp_path))
    datasets.import_named("letters", list("abcdefghij"), tiny_idx_dir, str(tmp_path))
    with pytest.raises(DataError, match=rf"kmnist \(shipped\); letters \(imported into {tmp_path}\)$"):
        datasets.builder("cifar10", str(tmp_path))


def test_one_list_of_dataset_names(monkeypatch):
    """The builders, the catalog (config validation, explore, data info) and `data import --dataset` all read
    harness.data.NAMES."""
    from harness import cli, data
    from harness.data import catalog

    assert tuple(datasets.BUILDERS) == data.NAMES == ("mnist", "fashion_mnist", "kmnist")
    assert catalog.NAMES is data.NAMES
    monkeypatch.setattr(data, "NAMES", ("kmnist",))
    parser = cli._parser()
    assert parser.parse_args(["data", "import", "d", "--dataset", "kmnist"]).dataset == "kmnist"
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "import", "d", "--dataset", "mnist"])


def test_a_cached_split_with_a_label_outside_the_classes_is_decoded_again(tmp_path):
    images = np.zeros((2, 28, 28, 1), np.uint8)
    for labels, cached in (([0, 9], True), ([0, 10], False)):
        np.savez(tmp_path / "split.npz", images=images, labels=np.array(labels, np.int32))
        assert (datasets._read_cache(tmp_path / "split.npz", 2) is not None) == cached


def test_mock_data_reads_through_data_source(mock_tfds):
    with mock_tfds(num_examples=24):
        split = datasets.load_split(datasets.builder("fashion_mnist"), "train")
    assert split.images.shape == (24, 28, 28, 1) and split.images.dtype == np.uint8
    assert split.labels.min() >= 0 and split.labels.max() < 10


@pytest.fixture
def local_site(tmp_path, monkeypatch):
    """A download site on 127.0.0.1 serving the four .gz files, registered as the `mnist` builder's source."""
    import functools
    import gzip
    import hashlib
    import http.server
    import threading

    from harness.data import idx

    served = tmp_path / "site"
    write_tiny_idx(served, num_train=30, num_test=10)
    for stem in idx.STANDARD_FILES.values():  # the site serves gzipped files only
        if (served / stem).exists():
            (served / f"{stem}.gz").write_bytes(gzip.compress((served / stem).read_bytes()))
            (served / stem).unlink()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    checksums = tmp_path / "checksums.tsv"
    checksums.write_text(
        "".join(
            f"{url}{p.name}\t{p.stat().st_size}\t{hashlib.sha256(p.read_bytes()).hexdigest()}\t{p.name}\n"
            for p in sorted(served.iterdir())
        )
    )

    class LocalMnist(datasets.Mnist, skip_registration=True):
        name = "mnist"
        URL = url
        _checksums_path = checksums

    monkeypatch.setitem(datasets.BUILDERS, "mnist", LocalMnist)
    monkeypatch.setattr(datasets, "DEBIAN_DIRS", {})
    monkeypatch.delenv("HARNESS_OFFLINE", raising=False)
    yield served
    server.shutdown()


def test_online_source_downloads_checks_and_prepares_without_tensorflow(local_site, tmp_path):
    import sys

    b, source = datasets.ensure_prepared("mnist", str(tmp_path / "tfds"))
    assert source.startswith("downloaded by tfds")
    assert len(datasets.load_split(b, "train")) == 30 and len(datasets.load_split(b, "test")) == 10
    assert "tensorflow" not in sys.modules


def test_download_with_wrong_checksum_is_one_line(local_site, tmp_path):
    target = local_site / "train-labels-idx1-ubyte.gz"
    blob = bytearray(target.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # same size, different content
    target.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="download of mnist failed") as e:
        datasets.ensure_prepared("mnist", str(tmp_path / "tfds"))
    assert "\n" not in str(e.value)


def test_decoded_splits_are_cached_and_a_bad_cache_is_decoded_again(tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_DATA_CACHE", str(tmp_path / "cache"))
    b = datasets.builder("mnist", tiny_data_dir)
    first = datasets.load_split(b, "train")
    (cached,) = (tmp_path / "cache").glob("mnist-3.1.0-train-*.npz")

    def no_decoding(*args):
        raise AssertionError("decoded although the cache holds the split")

    with monkeypatch.context() as m:
        m.setattr(datasets, "_decode_split", no_decoding)
        again = datasets.load_split(b, "train")
    assert np.array_equal(again.images, first.images) and np.array_equal(again.labels, first.labels)
    cached.write_bytes(cached.read_bytes()[:1000])  # truncated: decoded again, and the cache rewritten
    assert np.array_equal(datasets.load_split(b, "train").images, first.images)
    assert cached.stat().st_size > 1000
    monkeypatch.setenv("HARNESS_DATA_CACHE", "off")
    cached.unlink()
    assert np.array_equal(datasets.load_split(b, "train").labels, first.labels) and not cached.exists()


def test_the_data_cache_keeps_one_file_per_dataset_and_split(tiny_idx_dir, tiny_data_dir, tmp_path, monkeypatch):
    import os
    import time

    cache = tmp_path / "cache"
    monkeypatch.setenv("HARNESS_DATA_CACHE", str(cache))
    for name, split in (("mnist", "train"), ("mnist", "test"), ("fashion_mnist", "train")):
        datasets.load_split(datasets.builder(name, tiny_data_dir), split)
    kept = sorted(p.name for p in cache.iterdir() if not p.name.startswith("mnist-3.1.0-train-"))
    (cache / "mnist-3.0.9-train-0123456789abcdef.npz").write_bytes(b"another version")
    killed = cache / ".mnist-3.1.0-train-0123456789abcdef.npz.99999.tmp.npz"  # a killed writer's, two hours ago
    killed.write_bytes(b"half")
    os.utime(killed, (time.time() - 7200, time.time() - 7200))
    writing = cache / ".mnist-3.1.0-train-fedcba9876543210.npz.99998.tmp.npz"  # another process, writing now
    writing.write_bytes(b"half")
    other = datasets.prepare_from_dir("mnist", tiny_idx_dir, str(tmp_path / "tfds"))  # another data dir: a new key
    datasets.load_split(other, "train")
    (new,) = [p.name for p in cache.glob("mnist-*-train-*.npz")]
    assert new == datasets._cache_path(other, "train").name
    assert sorted(p.name for p in cache.iterdir()) == sorted([*kept, new, writing.name])


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "kmnist"])
def test_every_shipped_dataset_imports_the_files_content(tiny_idx_dir, tiny_data_dir, name):
    from harness.data import idx

    b = datasets.builder(name, tiny_data_dir)
    assert b.is_prepared() and b.version == "3.1.0" and b.name == name
    images, labels = idx.load_split(tiny_idx_dir, "test")
    loaded = datasets.load_split(b, "test")
    assert _sorted_pairs(loaded.images, loaded.labels) == _sorted_pairs(images, labels)


LETTERS = list("abcdefghij")


def test_import_named_prepares_the_files_under_its_name_with_its_classes(tiny_idx_dir, tmp_path):
    import sys

    from harness.data import catalog, idx

    b = datasets.import_named("letters", LETTERS, tiny_idx_dir, str(tmp_path))
    assert b.is_prepared() and b.name == "letters" and b.version == "1.0.0"
    assert Path(b.data_dir) == tmp_path / "letters" / "1.0.0"
    assert catalog.read("letters", tmp_path) == catalog.Imported("letters", tuple(LETTERS), str(tiny_idx_dir))
    again, source = datasets.ensure_prepared("letters", str(tmp_path))
    assert source.startswith("prepared tfds data in") and datasets.class_names("letters", str(tmp_path)) == LETTERS
    for split in ("train", "test"):
        images, labels = idx.load_split(tiny_idx_dir, split)
        loaded = datasets.load_split(again, split)
        assert _sorted_pairs(loaded.images, loaded.labels) == _sorted_pairs(images, labels)
    assert "tensorflow" not in sys.modules


def _tree(directory):
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")) if directory.exists() else None


def test_import_named_refuses_a_second_import_and_a_folder_it_did_not_write(tiny_idx_dir, tmp_path):
    datasets.import_named("letters", LETTERS, tiny_idx_dir, str(tmp_path))
    before = _tree(tmp_path)
    with pytest.raises(DataError, match=r"letters is already imported into .*; remove that folder to import it again"):
        datasets.import_named("letters", list("klmnopqrst"), tiny_idx_dir, str(tmp_path))
    (tmp_path / "cifar10" / "3.0.2").mkdir(parents=True)  # a stock tfds dataset in the same data dir
    with pytest.raises(DataError, match=r"cifar10 holds data harness did not import .*; choose another name"):
        datasets.import_named("cifar10", LETTERS, tiny_idx_dir, str(tmp_path))
    assert _tree(tmp_path) == sorted([*before, "cifar10", "cifar10/3.0.2"])


@pytest.mark.parametrize(
    ("labels", "classes", "match"),
    [
        (  # issue 22 item 11: labels beyond the models' outputs are named, not "give one name per label"
            np.arange(12) % 12,
            [f"c{k}" for k in range(10)],
            r"labels 0\.\.11 make 12 classes \(label 10: 1 in train, 1 in test; label 11: 1 in train, 1 in test\); "
            r"harness's models have 10 outputs",
        ),
        (
            np.arange(26) % 26,
            [f"c{k}" for k in range(26)],
            r"make 26 classes \(label 10: .*; …\); harness's models have 10 outputs",
        ),
        (np.arange(4) % 3, ["a", "b", "c"], r"make 3 classes; .* only 10-class datasets"),
    ],
)
def test_import_named_refuses_another_class_count_and_writes_nothing(tmp_path, labels, classes, match):
    from helpers import make_images

    from harness.data import idx

    src = tmp_path / "src"
    src.mkdir()
    for split in ("train", "test"):
        n = len(labels)
        stems = {kind: idx.STANDARD_FILES[(split, kind)] for kind in ("images", "labels")}
        (src / stems["images"]).write_bytes(idx.encode_images(make_images(np.zeros(n, np.int32))))
        (src / stems["labels"]).write_bytes(idx.encode_labels(labels))
    with pytest.raises(DataError, match=match):
        datasets.import_named("mine", classes, src, str(tmp_path / "tfds"))
    assert not (tmp_path / "tfds").exists()


def test_a_failed_import_removes_the_folder_it_made_and_a_half_import_is_one_line(tiny_idx_dir, tmp_path, monkeypatch):
    def killed(self, *args, **kwargs):
        (Path(self.data_dir).parent / "incomplete.x").mkdir(parents=True)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(datasets._ImportedBuilder, "download_and_prepare", killed)
        with pytest.raises(KeyboardInterrupt):
            datasets.import_named("letters", LETTERS, tiny_idx_dir, str(tmp_path))
    assert not (tmp_path / "letters").exists()
    from harness.data import catalog

    catalog.write(catalog.Imported("letters", tuple(LETTERS)), tmp_path)  # a description whose import did not finish
    with pytest.raises(DataError, match=r"letters is not prepared in .* `harness data import DIR --as letters"):
        datasets.ensure_prepared("letters", str(tmp_path))
    assert datasets.import_named("letters", LETTERS, tiny_idx_dir, str(tmp_path)).is_prepared()  # may import again
