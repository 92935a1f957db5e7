"""Shared fixtures, and the environment every test process runs in. Helpers that test modules import are in
helpers.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Set here, at import, because it must be before anything imports jax (the test modules do, and so do the
# helpers below): jax reads XLA_FLAGS and JAX_PLATFORMS once, when its backends start. Every test process thus
# sees 8 fake CPU devices; the subprocesses the tests start inherit both.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest
from helpers import REPO, write_tiny_idx

from harness import config as config_lib
from harness import data
from harness.data import datasets

# Harness's caches of compiled programs and decoded splits: one temp dir each for the whole session (the user's
# own caches are never read or filled), removed at its end. A variable already set is left as it is.
_SESSION_CACHES = {"HARNESS_COMPILATION_CACHE": "harness-jax-cache-", "HARNESS_DATA_CACHE": "harness-data-cache-"}
_made: dict[str, str] = {}


def pytest_configure(config):
    """Runs before the test modules are imported (and anything reads harness's settings)."""
    for name, prefix in _SESSION_CACHES.items():
        if name not in os.environ:
            _made[name] = os.environ[name] = tempfile.mkdtemp(prefix=prefix)


def pytest_unconfigure(config):
    for name, directory in _made.items():
        shutil.rmtree(directory, ignore_errors=True)
        if os.environ.get(name) == directory:
            del os.environ[name]
    _made.clear()


@pytest.fixture(scope="session")
def tiny_idx_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_idx")
    write_tiny_idx(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory, tiny_idx_dir):
    """A tfds data dir holding the tiny dataset imported as both mnist and fashion_mnist."""
    data_dir = tmp_path_factory.mktemp("tfds")
    for name in data.NAMES:
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
    c.checkpoint_min_seconds = 0.0  # every epoch's end saves: steps the tests can name, whatever the machine's speed
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


# ---- installing harness like a user: a wheel into a fresh venv (helpers.fresh_venv) --------------------------

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
