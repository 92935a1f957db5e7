"""Which checkpoint steps to keep, which step folders harness may delete, and how a step leaves the listing.

- ``steps_to_keep(records, keep, keep_best)``: a pure function over the digest records of *good* steps (digested
  and matching their files). A corrupt step never takes a slot, so a good step is never removed while fewer than
  ``keep`` good ones would remain.
- A step folder is **harness's** when it holds nothing but Orbax's entries (``_CHECKPOINT_METADATA``,
  ``commit_success.txt``, ``state/``, ``meta/``) and either harness recorded a digest for it and it holds no file
  the digest does not list (files may be missing: a damaged step of harness's is still harness's), or, without a
  digest, its ``_CHECKPOINT_METADATA`` names exactly harness's two items (``state``, ``meta``). harness deletes
  only such folders; any other folder that stands in the way (a number-named folder of yours, a step with an
  unknown file in it, unreadable Orbax metadata) is moved aside to ``checkpoints/.bad-STEP-XXXXXXXX`` and kept.
- Deleting renames the step out of Orbax's listing first (atomic), so a kill mid-delete never leaves a listed,
  half-deleted step; ``sweep`` finishes such deletions on the next start.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

TRASH_PREFIX = ".trash-"  # a step being deleted (deleted again on the next start)
BAD_PREFIX = ".bad-"  # a step folder harness would not delete, moved out of the way (never deleted)
ORBAX_ENTRIES = frozenset({"_CHECKPOINT_METADATA", "commit_success.txt", "state", "meta"})
HARNESS_ITEMS = frozenset({"state", "meta"})


def steps_to_keep(records: Mapping[int, Mapping], keep: int, keep_best: int) -> set[int]:
    """The steps to keep among ``records`` (step → digest record, good steps only): the newest ``keep`` plus the
    ``keep_best`` with the highest ``test_accuracy`` (ties go to the newer step). Steps absent from ``records``
    (corrupt, undigested, unverified) are never in the result."""
    steps = sorted(records)
    latest = set(steps[-keep:]) if keep > 0 else set()
    scored = sorted((r["test_accuracy"], s) for s, r in records.items() if r.get("test_accuracy") is not None)
    best = {s for _, s in scored[-keep_best:]} if keep_best > 0 else set()
    return latest | best


def is_harness_step(step_dir: Path, record: Mapping | None) -> bool:
    """Whether ``step_dir`` is a step folder harness wrote (see the module docstring), i.e. one it may delete."""
    if step_dir.is_symlink():
        return False
    try:
        entries = {p.name for p in step_dir.iterdir()}
    except OSError:
        return False
    if not entries <= ORBAX_ENTRIES:
        return False
    if record is not None:  # harness recorded its files: what is left of them (some may be deleted) is harness's
        files = {str(p.relative_to(step_dir)) for p in step_dir.rglob("*") if p.is_file()}
        return files <= set(record.get("files", {}))
    try:
        handlers = json.loads((step_dir / "_CHECKPOINT_METADATA").read_text())["item_handlers"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return isinstance(handlers, dict) and set(handlers) == HARNESS_ITEMS


def remove_step(step_dir: Path, digest: Path, record: Mapping | None) -> Path | None:
    """Takes a step folder out of the listing: deleted (with its ``digest`` file) when it is harness's, else moved
    aside with its digest file beside it. Returns where it was moved, or None when it was deleted."""
    tag = f"{step_dir.name}-{uuid.uuid4().hex[:8]}"
    if is_harness_step(step_dir, record):
        trash = step_dir.with_name(f"{TRASH_PREFIX}{tag}")
        step_dir.rename(trash)  # atomic: the step leaves the listing at once
        digest.unlink(missing_ok=True)
        shutil.rmtree(trash, ignore_errors=True)
        return None
    aside = step_dir.with_name(f"{BAD_PREFIX}{tag}")
    step_dir.rename(aside)
    if digest.exists():
        digest.rename(aside.with_name(f"{aside.name}.digest.json"))
    return aside


def sweep(directory: Path, digest_dir: Path) -> None:
    """Finishes deletions a kill interrupted: only harness's trash folders, orphan digests and temporary files."""
    for trash in directory.glob(f"{TRASH_PREFIX}*"):
        shutil.rmtree(trash, ignore_errors=True)
    for digest in digest_dir.glob("*.json"):
        if digest.stem.isdigit() and not (directory / digest.stem).is_dir():
            digest.unlink(missing_ok=True)
    for tmp in digest_dir.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
