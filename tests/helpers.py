"""Helpers that several test modules import: tiny generated IDX data, TensorBoard event files, headless Chromium,
and installing harness like a user. Fixtures live in conftest.py; this module changes nothing when imported."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from harness.data import datasets, idx

REPO = Path(__file__).resolve().parent.parent

# ---- tiny generated data ---------------------------------------------------------------------------------------


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


def write_tiny_idx(directory: Path, num_train: int = 512, num_test: int = 100, seed: int = 0) -> dict:
    """Writes the four standard files: train gzipped with a named header, test plain. Returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", num_train), ("test", num_test)):
        labels = rng.integers(0, idx.NUM_CLASSES, n).astype(np.int32)
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


# ---- TensorBoard event files ----------------------------------------------------------------------------------


def read_events(logdir: Path) -> list:
    """Every Event proto in every events file under ``logdir``, read without TensorFlow (the TFRecord framing:
    length, crc, payload, crc)."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i : i + 8])
            events.append(event_pb2.Event.FromString(data[i + 12 : i + 12 + length]))
            i += 12 + length + 4
    return events


# ---- a page as a person sees it: headless Chromium (Debian's `chromium`) --------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")

_PROBE = """<script>window.addEventListener('load', () => {
  document.body.setAttribute('data-image-widths',
    JSON.stringify(Array.from(document.images, i => (i.complete ? i.naturalWidth : -1))));
});</script>"""


def render(page: Path) -> tuple[list[int], str]:
    """(natural width of every <img> after load, the page's visible text) as headless Chromium renders it."""
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probe.as_uri(),
        ]
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    probe.unlink()
    match = re.search(r'data-image-widths="([^"]*)"', dom)
    assert match, "the page did not finish loading in Chromium"
    widths = json.loads(match.group(1).replace("&quot;", '"'))
    text = re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", dom, flags=re.S))
    return widths, text


# ---- installing harness like a user: a fresh venv ------------------------------------------------------------


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


def final_checkpoint(workdir):
    """(host state, metadata) of the latest good checkpoint in ``workdir``, restored like a resume would."""
    from harness import runtime
    from harness.build import build, saved_config
    from harness.checkpoint import Checkpoints

    ckpt = Checkpoints(workdir, create=False)
    step = ckpt.good_steps()[-1]
    meta = ckpt.read_meta(step)
    run = build(saved_config(meta["config"]), runtime.select_devices(1), steps_per_epoch=meta["steps_per_epoch"])
    state, meta = ckpt.restore(run.host_state, step)
    ckpt.close()
    return state, meta
