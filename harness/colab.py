"""Google Colab: detect the runtime and keep workdirs on a mounted Google Drive, so checkpoints outlive it.

Detection reads ``sys.modules``, the environment and :data:`DRIVE_MOUNT`; tests monkeypatch them or pass
``environ``/``modules``/``mount`` explicitly.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path

DRIVE_MOUNT = Path("/content/drive")  # where `google.colab.drive.mount` puts Google Drive
COLAB_ENV_VARS = ("COLAB_RELEASE_TAG", "COLAB_GPU", "COLAB_TPU_ADDR")  # set by Colab runtimes


def in_colab(environ: Mapping[str, str] | None = None, modules: Mapping[str, object] | None = None) -> bool:
    """True in a Google Colab runtime: ``google.colab`` is loaded or importable, or a Colab variable is set."""
    environ = os.environ if environ is None else environ
    if any(environ.get(name) for name in COLAB_ENV_VARS):
        return True
    modules = sys.modules if modules is None else modules
    if "google.colab" in modules:
        return True
    if modules is not sys.modules:  # explicit modules given: do not look at what this process could import
        return False
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):  # no `google` package, or a namespace package without a spec
        return False


def drive_root(mount: Path | None = None, colab: bool | None = None) -> Path | None:
    """The mounted Drive's ``MyDrive`` folder when in Colab and it exists, else None."""
    colab = in_colab() if colab is None else colab
    root = (DRIVE_MOUNT if mount is None else Path(mount)) / "MyDrive"
    return root if colab and root.is_dir() else None


def default_workdir(config_name: str, mount: Path | None = None, colab: bool | None = None) -> Path:
    """``<MyDrive>/harness/runs/<config_name>`` in Colab with Drive mounted, else ``runs/<config_name>``."""
    root = drive_root(mount, colab)
    return root / "harness" / "runs" / config_name if root is not None else Path("runs") / config_name
