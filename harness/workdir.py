"""Work directories: harness marks the ones it creates and refuses to write into anybody else's."""

from __future__ import annotations

import contextlib
import datetime
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import harness
from harness.errors import HarnessError, TrainingError, WorkdirError

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


@contextlib.contextmanager
def claimed(workdir: Path, main: bool = True) -> Iterator[Path]:
    """Claims ``workdir`` (process 0 only) for a run; when the run fails with a :class:`HarnessError` other than a
    :class:`TrainingError` before any checkpoint exists, removes what this run created (a new workdir, or the
    contents it put into an empty one), so a refused run leaves nothing half-made behind."""
    existed = workdir.is_dir()
    fresh = not existed or not any(workdir.iterdir())
    if main:
        claim(workdir)
    try:
        yield workdir
    except TrainingError:
        raise
    except HarnessError:
        checkpoints = workdir / "checkpoints"
        if main and fresh and not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
            _discard(workdir, keep_dir=existed)
        raise


def _discard(workdir: Path, keep_dir: bool) -> None:
    if not keep_dir:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    for entry in workdir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
