"""Shared fixtures. Every test process sees 8 fake CPU devices (set before jax is imported)."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HARNESS_COMPILATION_CACHE", __import__("tempfile").mkdtemp(prefix="harness-jax-cache-"))
os.environ.setdefault("HARNESS_DATA_CACHE", __import__("tempfile").mkdtemp(prefix="harness-data-cache-"))

import numpy as np
import pytest

from harness import config as config_lib
from harness.data import datasets, idx


def make_images(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Learnable synthetic images: class k lights up rows 2k+2..2k+4 (plus noise)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (len(labels), 28, 28, 1), dtype=np.uint8)
    for i, k in enumerate(labels):
        images[i, 2 * k + 2 : 2 * k + 5, 4:24, 0] = 200 + rng.integers(0, 55)
    return images


def gzip_with_header(payload: bytes, name: str) -> bytes:
    """gzip bytes whose header carries a file name and an mtime (like Debian's re-gzipped files)."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", fileobj=buf, mtime=1591315200) as f:
        f.write(payload)
    return buf.getvalue()


def write_tiny_idx(directory, num_train: int = 512, num_test: int = 100, seed: int = 0) -> dict:
    """Writes the four standard files: train gzipped with a named header, test plain. Returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", num_train), ("test", num_test)):
        labels = rng.integers(0, 10, n).astype(np.int32)
        arrays[split] = (make_images(labels, seed + n), labels)
    directory.mkdir(parents=True, exist_ok=True)
    for (split, kind), stem in idx.STANDARD_FILES.items():
        images, labels = arrays[split]
        payload = idx.encode_images(images) if kind == "images" else idx.encode_labels(labels)
        if split == "train":
            (directory / f"{stem}.gz").write_bytes(gzip_with_header(payload, stem))
        else:
            (directory / stem).write_bytes(payload)
    return arrays


def prepared_mnist(tmp_path_factory, num_train: int, num_test: int, seed: int) -> str:
    """A new tfds data dir holding a tiny dataset of these sizes prepared as ``mnist``."""
    idx_dir, data_dir = tmp_path_factory.mktemp("idx"), tmp_path_factory.mktemp("tfds")
    write_tiny_idx(idx_dir, num_train=num_train, num_test=num_test, seed=seed)
    datasets.prepare_from_dir("mnist", idx_dir, str(data_dir))
    return str(data_dir)


@pytest.fixture(scope="session")
def tiny_idx_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_idx")
    write_tiny_idx(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory, tiny_idx_dir):
    """A tfds data dir holding the tiny dataset imported as both mnist and fashion_mnist."""
    data_dir = tmp_path_factory.mktemp("tfds")
    for name in ("mnist", "fashion_mnist"):
        datasets.prepare_from_dir(name, tiny_idx_dir, str(data_dir))
    return str(data_dir)


@pytest.fixture
def tiny_config(tiny_data_dir):
    """A config that trains the tiny MLP on the tiny dataset in about a second."""
    c = config_lib.base_config()
    c.dataset = "fashion_mnist"
    c.data_dir = tiny_data_dir
    c.model = "mlp_tiny"
    c.num_epochs = 2
    c.batch_size = 64
    c.learning_rate = 3e-3
    c.log_every_steps = 4
    c.report = False
    return c


@pytest.fixture
def mock_tfds(monkeypatch):
    """``tfds.testing.mock_data`` with its ``__getitems__`` fixed (tfds 4.9.10 leaves it unbound: the mock's
    ``_getitems(self, record_keys, generator)`` then receives the keys as ``self``)."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.testing import mocking

    original = mocking._getitems

    def unbound_getitems(record_keys, generator, serialized=False):
        return original(None, record_keys, generator, serialized)

    monkeypatch.setattr(mocking, "_getitems", unbound_getitems)
    return tfds.testing.mock_data


def final_checkpoint(workdir):
    """(host state, metadata) of the latest good checkpoint in ``workdir``, restored like a resume would."""
    import jax

    from harness import models, steps
    from harness.checkpoint import Checkpoints

    ckpt = Checkpoints(workdir, create=False)
    step = ckpt.good_steps()[-1]
    meta = ckpt.read_meta(step)
    c = config_lib.base_config()
    c.update({**meta["config"], "mlp_hidden": tuple(meta["config"]["mlp_hidden"])})
    _, target = steps.init_state(models.create(c), steps.make_optimizer(c, meta["steps_per_epoch"]))
    state, meta = ckpt.restore(jax.device_get(target), step)
    ckpt.close()
    return state, meta


# ---- installing harness like a user: a wheel into a fresh venv -----------------------------------------------

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "harness", "configs", "benchmarks/peers")


@pytest.fixture(scope="session")
def harness_wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout's sources (offline: this venv's setuptools, no isolation)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        source, target = REPO / name, src / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*pip, "-w", str(out), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("harness-*.whl")
    return wheel


def fresh_venv(directory: Path) -> Path:
    """A new venv without harness whose other packages are this test venv's (a .pth line, so its editable
    harness finder is not loaded); returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True, timeout=120)
    python = directory / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (Path(purelib) / "harness_test_packages.pth").write_text("\n".join(ours) + "\n")
    return python


def pip_env(environ: dict | None = None) -> dict:
    """The environment under which a fresh venv's pip installs the wheel alone, offline, ignoring the test venv."""
    return {**(environ or os.environ), "PIP_NO_DEPS": "1", "PIP_NO_INDEX": "1", "PIP_IGNORE_INSTALLED": "1"}
