"""The digest store: ``WORKDIR/checkpoint_digests/<step>.json``, harness's proof that a checkpoint step is whole.

A record is written (atomically) only after Orbax committed the step: the sha256 of every file of the step plus a
summary for listings (epoch, position, test accuracy, fingerprint, save time). A step counts as good only while its
record exists and every file still matches it, so a killed save, a flipped byte, a truncated or deleted file are
all detected. Verifying reads every file: each step is verified at most once per process (a step whose record this
process just wrote is known good).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import uuid
from pathlib import Path

from harness.errors import WorkdirError


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename (never a half-written file); raises
    WorkdirError naming ``path`` when it cannot (read-only workdir, full disk)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as e:
        raise WorkdirError(f"cannot write {path} ({e.strerror or e})") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def file_digests(step_dir: Path) -> dict[str, str]:
    """sha256 of every file under ``step_dir``, by relative path."""
    digests = {}
    for path in sorted(p for p in step_dir.rglob("*") if p.is_file()):
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digests[str(path.relative_to(step_dir))] = h.hexdigest()
    return digests


class Digests:
    """The records of the steps in ``steps_dir``, kept in ``digest_dir``."""

    def __init__(self, steps_dir: Path, digest_dir: Path):
        self.steps_dir, self.digest_dir = steps_dir, digest_dir
        self._problems: dict[int, str | None] = {}  # verification results of this process, by step

    def path(self, step: int) -> Path:
        return self.digest_dir / f"{step}.json"

    def record(self, step: int) -> dict | None:
        """The record of ``step``, or None when it has none (not committed, or not ours)."""
        try:
            return json.loads(self.path(step).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def steps(self) -> list[int]:
        """Steps that committed and have a record (not yet verified against their files)."""
        steps = []
        for path in self.digest_dir.glob("*.json") if self.digest_dir.is_dir() else ():
            if path.stem.isdigit() and (self.steps_dir / path.stem).is_dir() and self.record(int(path.stem)):
                steps.append(int(path.stem))
        return sorted(steps)

    def verify(self, step: int) -> str | None:
        """None when every file of ``step`` matches its record, else what is wrong (one phrase). Reads every file."""
        self._problems[step] = problem = self._check(step)
        return problem

    def _check(self, step: int) -> str | None:
        record = self.record(step)
        if record is None:
            return "no digest (the save never completed)"
        actual = file_digests(self.steps_dir / str(step))
        for name, digest in record["files"].items():
            if name not in actual:
                return f"file {name} is missing"
            if actual[name] != digest:
                return f"file {name} does not match its digest (corrupted)"
        extra = sorted(set(actual) - set(record["files"]))
        return f"unexpected file {extra[0]}" if extra else None

    def problem(self, step: int) -> str | None:
        """:meth:`verify`, once per process: what this process verified or wrote itself is trusted."""
        return self._problems[step] if step in self._problems else self.verify(step)

    def known_problem(self, step: int) -> str | None:
        """What this process found wrong with ``step`` (None when it was not verified or is good)."""
        return self._problems.get(step)

    def write(self, step: int, summary: dict) -> None:
        """Records the committed ``step``: the digests of its files, the save time and ``summary``."""
        record = {
            "step": step,
            "files": file_digests(self.steps_dir / str(step)),
            "saved_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            **summary,
        }
        write_atomic(self.path(step), json.dumps(record, indent=1, sort_keys=True) + "\n")
        self._problems[step] = None  # its digests were just computed from its files

    def forget(self, step: int) -> None:
        """Drops what this process knew about ``step`` (it left the listing)."""
        self._problems.pop(step, None)
