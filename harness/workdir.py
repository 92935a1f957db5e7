"""Work directories: harness marks the ones it creates and refuses to write into anybody else's."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import harness
from harness.errors import WorkdirError

MARKER = ".harness-workdir"


def check(workdir: str | Path) -> Path:
    """Raises unless ``workdir`` is new, empty or a harness workdir; creates nothing."""
    workdir = Path(workdir).resolve()
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"{workdir}: exists and is not a directory")
    marker = workdir / MARKER
    if workdir.is_dir() and not marker.is_file() and any(workdir.iterdir()):
        raise WorkdirError(
            f"{workdir}: not empty and not a harness workdir (no {MARKER} file); use a new or empty directory"
        )
    return workdir


def claim(workdir: str | Path) -> Path:
    """Creates ``workdir`` (or adopts an empty one) with a marker; refuses a non-empty directory without one."""
    workdir = check(workdir)
    marker = workdir / MARKER
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        if not marker.is_file():
            created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            marker.write_text(json.dumps({"harness": harness.__version__, "created": created}) + "\n")
    except OSError as e:
        raise WorkdirError(f"{workdir}: cannot write here ({e.strerror or e})") from None
    return workdir
