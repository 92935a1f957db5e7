"""Checkpoints that survive kills, corruption and full disks: Orbax saves plus harness's own digests and retention.

Layout of ``WORKDIR``:
- ``checkpoints/<step>/``: Orbax ``CheckpointManager`` steps (``state``: host arrays, one copy, never pmap's
  replicas; ``meta``: JSON with the config, data position, metric history and fingerprint). Orbax writes a step
  into a temporary folder and renames it when committed, so a killed save never looks like a checkpoint.
- ``checkpoint_digests/<step>.json``: written (atomically) only after the step committed: the sha256 of every file
  of the step plus a summary for listings. A step counts as good only with a digest that still matches, so a
  killed save, a flipped byte, a truncated or deleted file are all detected and skipped, never restored.

Orbax never deletes here (pitfall: with ``max_to_keep`` it deletes number-named folders that are not its own, and a
kill mid-delete leaves a listed, unrestorable step). Retention is ours: a step to drop is first renamed out of the
listing (atomic), then its digest and files are removed. Only steps with a digest — ones this harness wrote — are
ever deleted.

In a multi-process run every process calls the same methods at the same steps: all of them take part in Orbax's
save and restore; process 0 alone writes digests and deletes, and the others wait for it at a barrier.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

import harness
from harness.errors import TrainingError, WorkdirError
from harness.parallel import barrier, is_main_process

TRASH_PREFIX = ".trash-"


def fingerprint(num_devices: int | None = None) -> dict:
    """Versions and devices of this process (``num_devices``: how many the run uses), saved with checkpoints."""
    import flax
    import optax

    device = jax.devices()[0]
    return {
        "harness": harness.__version__,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "orbax": getattr(ocp, "__version__", "unknown"),
        "python": platform.python_version(),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": num_devices or jax.device_count(),
        "visible_devices": jax.device_count(),
        "process_count": jax.process_count(),
    }


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename (never a half-written file)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _file_digests(step_dir: Path) -> dict[str, str]:
    digests = {}
    for path in sorted(p for p in step_dir.rglob("*") if p.is_file()):
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digests[str(path.relative_to(step_dir))] = h.hexdigest()
    return digests


def _leaf_specs(tree: Any) -> list[str]:
    """``dtype[shape]`` of every leaf: stored with a checkpoint, because Orbax silently casts dtypes and can
    return the stored shape for a target of another shape."""
    return [f"{np.asarray(x).dtype}{list(np.shape(x))}" for x in jax.tree.leaves(tree)]


def _all_finite(tree: Any) -> bool:
    return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree) if np.issubdtype(np.asarray(x).dtype, np.inexact))


class Checkpoints:
    """``WORKDIR/checkpoints``: keeps the last ``keep`` good steps plus the ``keep_best`` best by test accuracy."""

    def __init__(
        self,
        workdir: Path,
        keep: int = 2,
        keep_best: int = 1,
        create: bool = True,
        warn: Callable[[str], Any] = print,
    ):
        workdir = Path(workdir).resolve()
        self.directory = workdir / "checkpoints"
        self.digest_dir = workdir / "checkpoint_digests"
        if not create and not self.directory.is_dir():
            raise WorkdirError(f"{workdir}: no checkpoints (train into this workdir first)")
        self.keep, self.keep_best, self.warn = keep, keep_best, warn
        self._pending: tuple[int, dict] | None = None
        self.last_saved: int | None = None
        try:
            if create:
                self.digest_dir.mkdir(parents=True, exist_ok=True)
            options = ocp.CheckpointManagerOptions(max_to_keep=None, create=create, cleanup_tmp_directories=create)
            self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        except OSError as e:
            raise WorkdirError(f"{self.directory}: cannot use this checkpoint dir ({e.strerror or e})") from None
        if create and is_main_process():
            self._sweep()
        barrier("harness-checkpoints-opened")
        good = self.good_steps()
        self.last_saved = good[-1] if good else None

    # ---- listing -------------------------------------------------------------------------------------------

    def _digest_path(self, step: int) -> Path:
        return self.digest_dir / f"{step}.json"

    def record(self, step: int) -> dict | None:
        """The digest record of ``step``, or None when it has none (not committed, or not ours)."""
        try:
            return json.loads(self._digest_path(step).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def good_steps(self) -> list[int]:
        """Steps that committed and have a digest record (not yet verified against their files)."""
        steps = []
        for path in self.digest_dir.glob("*.json") if self.digest_dir.is_dir() else ():
            if path.stem.isdigit() and (self.directory / path.stem).is_dir() and self.record(int(path.stem)):
                steps.append(int(path.stem))
        return sorted(steps)

    def verify(self, step: int) -> str | None:
        """None when every file of ``step`` matches its digest, else what is wrong (one phrase)."""
        record = self.record(step)
        if record is None:
            return "no digest (the save never completed)"
        actual = _file_digests(self.directory / str(step))
        for name, digest in record["files"].items():
            if name not in actual:
                return f"file {name} is missing"
            if actual[name] != digest:
                return f"file {name} does not match its digest (corrupted)"
        extra = sorted(set(actual) - set(record["files"]))
        return f"unexpected file {extra[0]}" if extra else None

    # ---- saving --------------------------------------------------------------------------------------------

    def save(self, step: int, state: Any, meta: dict) -> bool:
        """Starts an async save of host ``state`` + JSON ``meta`` at ``step``; False when ``step`` exists.

        ``meta``'s ``epoch``, ``step_in_epoch``, ``test_accuracy`` and ``fingerprint`` also go to the digest record.
        """
        self.finalize()
        if step in self.good_steps() or (self.directory / str(step)).exists():
            return False
        if not _all_finite(state):
            last = f"step {self.last_saved}" if self.last_saved is not None else "none"
            raise TrainingError(f"parameters are not finite at step {step}: not saved; last good checkpoint: {last}")
        meta = {**meta, "leaves": _leaf_specs(state)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        try:
            self.manager.save(step, args=args, force=True)  # force: Orbax skips steps below its latest
        except (OSError, ValueError) as e:
            raise self._write_error(step, e) from None
        summary = {k: meta.get(k) for k in ("epoch", "step_in_epoch", "test_accuracy", "fingerprint")}
        self._pending = (step, summary)
        return True

    def _write_error(self, step: int, e: Exception) -> WorkdirError:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())[:200]
        return WorkdirError(f"cannot write checkpoint step {step} in {self.directory}: {reason}")

    def poll(self) -> None:
        """Records the pending save as soon as it has committed (cheap; the loop calls it after every step).
        Several processes record it at the next save or at the end instead, so that they all wait together."""
        if jax.process_count() > 1:
            return
        if self._pending is not None and not self.manager.is_saving_in_progress():
            self.finalize()

    def finalize(self) -> None:
        """Waits for the pending save, records its digest, then applies retention."""
        if self._pending is None:
            return
        (step, summary), self._pending = self._pending, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # Orbax re-raises the async writer's error type
            raise self._write_error(step, e) from None
        step_dir = self.directory / str(step)
        if not step_dir.is_dir():
            raise WorkdirError(f"checkpoint step {step} did not commit in {self.directory}")
        if is_main_process():
            self._record(step, step_dir, summary)
        barrier(f"harness-checkpoint-{step}-recorded")
        if not is_main_process():
            self.manager.reload()  # process 0 may have deleted steps
        self.last_saved = step

    def _record(self, step: int, step_dir: Path, summary: dict) -> None:
        """Writes the digest record of the committed ``step``, then applies retention."""
        record = {
            "step": step,
            "files": _file_digests(step_dir),
            "saved_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            **summary,
        }
        try:
            write_atomic(self._digest_path(step), json.dumps(record, indent=1, sort_keys=True) + "\n")
        except OSError as e:
            raise self._write_error(step, e) from None
        self._retain()

    def _retain(self) -> None:
        steps = self.good_steps()
        keep = set(steps[-self.keep :]) if self.keep > 0 else set()
        scored = [(self.record(s).get("test_accuracy"), s) for s in steps]
        best = sorted(((a, s) for a, s in scored if a is not None), reverse=True)[: self.keep_best]
        keep |= {s for _, s in best}
        for step in steps:
            if step not in keep:
                self._delete(step)

    def _delete(self, step: int) -> None:
        trash = self.directory / f"{TRASH_PREFIX}{step}-{uuid.uuid4().hex[:8]}"
        (self.directory / str(step)).rename(trash)  # atomic: the step leaves the listing at once
        self._digest_path(step).unlink(missing_ok=True)
        shutil.rmtree(trash, ignore_errors=True)
        self.manager.reload()

    def _sweep(self) -> None:
        """Finishes deletions a kill interrupted (only our trash folders and our orphan digests)."""
        for trash in self.directory.glob(f"{TRASH_PREFIX}*"):
            shutil.rmtree(trash, ignore_errors=True)
        for digest in self.digest_dir.glob("*.json"):
            if digest.stem.isdigit() and not (self.directory / digest.stem).is_dir():
                digest.unlink(missing_ok=True)
        for tmp in self.digest_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    # ---- restoring -----------------------------------------------------------------------------------------

    def restore(self, target: Any, step: int) -> tuple[Any, dict]:
        """Restores ``step`` shaped exactly like host ``target``; raises WorkdirError when it cannot."""
        problem = self.verify(step)
        if problem:
            raise WorkdirError(f"checkpoint step {step}: {problem}")
        meta = self.read_meta(step)
        stored, wanted = meta.get("leaves"), _leaf_specs(target)
        if stored != wanted:
            if stored is None or len(stored) != len(wanted):
                raise WorkdirError(f"checkpoint step {step} holds another structure: it belongs to another model")
            got, want = next((g, w) for g, w in zip(stored, wanted, strict=True) if g != w)
            raise WorkdirError(
                f"checkpoint step {step} holds {got} where this model needs {want}: it belongs to another model"
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))  # meta was read above
        try:
            restored = self.manager.restore(step, args=args)
        except Exception as e:  # Orbax raises many types for unreadable data
            raise WorkdirError(f"checkpoint step {step} does not restore ({type(e).__name__}: {e})") from None
        state = jax.tree.map(np.asarray, restored.state)
        if _leaf_specs(state) != wanted:
            raise WorkdirError(f"checkpoint step {step} restored with other shapes or dtypes than it recorded")
        return state, meta

    def restore_latest(self, target: Any) -> tuple[int, Any, dict] | None:
        """The newest step that verifies and restores, warning about each one skipped; None when there is none."""
        committed = [s for s in self.manager.all_steps(read=True) if (self.directory / str(s)).is_dir()]
        good = set(self.good_steps())
        for step in sorted(set(committed) | good, reverse=True):
            try:
                state, meta = self.restore(target, step)
            except WorkdirError as e:
                if "belongs to another model" in str(e):
                    raise
                self.warn(f"warning: skipping {e}")
                continue
            return step, state, meta
        return None

    def read_meta(self, step: int) -> dict:
        """The JSON metadata of ``step`` (config, data position, metric history, fingerprint)."""
        try:
            return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
        except Exception as e:  # Orbax raises many types for unreadable data
            raise WorkdirError(f"checkpoint step {step}: metadata unreadable ({type(e).__name__})") from None

    def listing(self) -> list[dict]:
        """Every step on disk, newest first, with its digest check and summary."""
        steps = set(self.manager.all_steps(read=True)) | set(self.good_steps())
        rows = []
        for step in sorted(steps, reverse=True):
            record = self.record(step) or {}
            rows.append(
                {"step": step, "problem": self.verify(step), **{k: v for k, v in record.items() if k != "files"}}
            )
        return rows

    def close(self) -> None:
        """Waits for pending saves to commit (and records them), then releases the manager."""
        try:
            self.finalize()
        finally:
            self.manager.close()
