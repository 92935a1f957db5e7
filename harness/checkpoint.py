"""Checkpoints that survive kills, corruption and full disks: Orbax saves plus harness's own digests and retention.

Layout of ``WORKDIR``:
- ``checkpoints/<step>/``: Orbax ``CheckpointManager`` steps (``state``: host arrays, one copy, never pmap's
  replicas; ``meta``: JSON with the config, data position, metric history and fingerprint). Orbax writes a step
  into a temporary folder and renames it when committed, so a killed save never looks like a checkpoint.
- ``checkpoint_digests/<step>.json`` (:mod:`harness.digests`): written (atomically) only after the step committed:
  the sha256 of every file of the step plus a summary for listings. A step counts as good only with a digest that
  still matches, so a killed save, a flipped byte, a truncated or deleted file are all detected and skipped, never
  restored.

Orbax never deletes here (pitfall: with ``max_to_keep`` it deletes number-named folders that are not its own, and a
kill mid-delete leaves a listed, unrestorable step). Retention is ours (``harness.retention``): only good steps count
(digested and matching, each verified at most once per process), a step to drop is first renamed out of the listing
(atomic), and only folders harness wrote are deleted. A save onto a step folder that is there but not good (a kill
between Orbax's commit and the digest, a corrupted file, a folder of yours) first takes it out of the way: deleted
when harness wrote it, else moved to ``checkpoints/.bad-STEP-…`` with a warning.

Orbax's own warnings and errors (a failed async save logs ~300 lines of tracebacks) are diverted while a save is in
flight and appended to ``WORKDIR/harness-errors.log``; the user sees one line naming the problem and that file.

In a multi-process run every process calls the same methods at the same steps: all of them take part in Orbax's
save and restore; process 0 alone writes digests and deletes, and the others wait for it at a barrier.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import json
import logging
import os
import platform
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

import harness
from harness.digests import Digests
from harness.errors import ForeignCheckpointError, TrainingError, WorkdirError
from harness.retention import is_harness_step, remove_step, steps_to_keep, sweep
from harness.runtime import barrier, is_main_process

ERROR_LOG = "harness-errors.log"
FOREIGN = "not a checkpoint harness wrote (never deleted)"  # a number-named folder without a digest, not Orbax's


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


def describe_position(epoch: int, step_in_epoch: int, steps_per_epoch: int = 0, num_epochs: int = 0) -> str:
    """A data position for people: ``end of epoch 10`` after a whole epoch, else ``epoch 3, step 462 of 469``
    (``steps_per_epoch`` given). ``num_epochs`` (the run's) is added, ``epoch 3 of 10``, when the position lies
    within it: a run shortened below its checkpoint never reads ``epoch 2 of 1``."""
    if step_in_epoch == 0 and epoch > 0:
        return f"end of epoch {epoch}" + (f" of {num_epochs}" if epoch <= num_epochs else "")
    of = f" of {num_epochs}" if epoch < num_epochs else ""
    return f"epoch {epoch + 1}{of}, step {step_in_epoch}" + (f" of {steps_per_epoch}" if steps_per_epoch else "")


def _os_reason(e: Exception) -> str:
    """The OS's words for a write failure (Orbax's writers report ``[os_error_code='28']`` inside a ValueError)."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    code = re.search(r"os_error_code='?(\d+)", str(e))
    return os.strerror(int(code.group(1))) if code else " ".join(str(e).split())[:200]


class _OrbaxLog(logging.Filter):
    """While attached, keeps Orbax's warnings and errors off the console; ``flush`` appends them to ``path``."""

    FORMAT = "%(asctime)s %(levelname)s [%(threadName)s] %(pathname)s:%(lineno)d %(message)s"

    def __init__(self, path: Path):
        super().__init__()
        self.path, self.lines = path, collections.deque(maxlen=1000)
        self.formatter = logging.Formatter(self.FORMAT)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname:
            return True
        self.lines.append(self.formatter.format(record))
        return False

    def attach(self) -> None:
        for logger in (logging.getLogger("absl"), logging.getLogger()):  # Orbax logs through absl and logging
            if self not in logger.filters:
                logger.addFilter(self)

    def detach(self) -> None:
        for logger in (logging.getLogger("absl"), logging.getLogger()):
            logger.removeFilter(self)

    def flush(self) -> bool:
        """Appends the diverted lines to the log file; False when there were none or it cannot be written."""
        if not self.lines:
            return False
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write("\n".join(self.lines) + "\n")
        except OSError:
            return False
        self.lines.clear()
        return True


def _leaf_specs(tree: Any) -> list[str]:
    """``dtype[shape]`` of every leaf: stored with a checkpoint, because Orbax silently casts dtypes and can
    return the stored shape for a target of another shape."""
    return [f"{np.asarray(x).dtype}{list(np.shape(x))}" for x in jax.tree.leaves(tree)]


def _stored(state: Any) -> Any:
    """What Orbax writes for ``state``: a dataclass state (``TrainState``) as the dict of its fields that are set.
    Orbax stores a dataclass as a dict of all its fields anyway; leaving out the unset ones (an option that is off,
    e.g. no EMA) keeps a checkpoint's layout what it was before that option existed, so older checkpoints restore."""
    if not dataclasses.is_dataclass(state) or isinstance(state, type):
        return state
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if getattr(state, f.name) is not None}


SAVE_OVERHEAD_BYTES = 256 << 10  # Orbax's dozen small files and the digest, with room to spare


def _save_bytes(state: Any, meta: dict) -> int:
    """About the bytes a save of ``state`` and ``meta`` writes (arrays uncompressed, the JSON, Orbax's files)."""
    arrays = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state))
    return arrays + len(json.dumps(meta, default=str)) + SAVE_OVERHEAD_BYTES


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


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
        self.digests = Digests(self.directory, self.digest_dir)
        self.log = _OrbaxLog(workdir / ERROR_LOG)
        self.last_saved: int | None = None
        try:
            if create:
                self.digest_dir.mkdir(parents=True, exist_ok=True)
            options = ocp.CheckpointManagerOptions(max_to_keep=None, create=create, cleanup_tmp_directories=create)
            self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        except OSError as e:
            raise WorkdirError(f"{self.directory}: cannot use this checkpoint dir ({e.strerror or e})") from None
        if create and is_main_process():
            sweep(self.directory, self.digest_dir)
        barrier("harness-checkpoints-opened")
        good = self.good_steps()
        self.last_saved = good[-1] if good else None

    # ---- listing -------------------------------------------------------------------------------------------

    def record(self, step: int) -> dict | None:
        """The digest record of ``step``, or None when it has none (not committed, or not ours)."""
        return self.digests.record(step)

    def good_steps(self) -> list[int]:
        """Steps that committed and have a digest record (not yet verified against their files)."""
        return self.digests.steps()

    def verify(self, step: int) -> str | None:
        """None when every file of ``step`` matches its digest, else what is wrong (one phrase). Reads every file."""
        problem = self.digests.verify(step)
        if self.record(step) is None and not is_harness_step(self.directory / str(step), None):
            return FOREIGN
        return problem

    # ---- saving --------------------------------------------------------------------------------------------

    def save(self, step: int, state: Any, meta: dict) -> bool:
        """Starts an async save of host ``state`` + JSON ``meta`` at ``step``; False when a good ``step`` exists.
        A ``step`` folder that is there but not good is taken out of the way first (see the module docstring).

        ``meta``'s ``epoch``, ``step_in_epoch``, ``test_accuracy`` and ``fingerprint`` also go to the digest record.
        """
        self.finalize()
        if not _all_finite(state):
            last = f"step {self.last_saved}" if self.last_saved is not None else "none"
            raise TrainingError(f"parameters are not finite at step {step}: not saved; last good checkpoint: {last}")
        present = os.path.lexists(self.directory / str(step))
        barrier(f"harness-checkpoint-{step}-looked")  # every process has looked before process 0 may clear it
        if present and not self._clear(step):
            return False
        meta = {**meta, "leaves": _leaf_specs(state)}
        self._check_space(step, state, meta)
        args = ocp.args.Composite(state=ocp.args.StandardSave(_stored(state)), meta=ocp.args.JsonSave(meta))
        self.log.attach()  # until finalize: the async writer logs its failures from other threads
        try:
            self.manager.save(step, args=args, force=True)  # force: Orbax skips steps below its latest
        except (OSError, ValueError) as e:
            raise self._write_error(step, e) from None
        summary = {k: meta.get(k) for k in ("epoch", "step_in_epoch", "test_accuracy", "fingerprint")}
        self._pending = (step, summary)
        return True

    def _clear(self, step: int) -> bool:
        """Takes the folder of ``step`` out of the way unless it is good; True when the step can be saved."""
        if is_main_process():
            problem = self.verify(step)
            if problem is not None:
                self._remove(step, problem, then=", saving it afresh")
        barrier(f"harness-checkpoint-{step}-cleared")
        if not is_main_process():
            self.manager.reload()
        return not os.path.lexists(self.directory / str(step))

    def _check_space(self, step: int, state: Any, meta: dict) -> None:
        """Refuses a save the disk cannot hold, before Orbax starts it: a full disk fails Orbax's writers part-way,
        leaving a temporary folder and printing tracebacks from threads harness cannot silence."""
        needed = _save_bytes(state, meta)
        try:
            free = shutil.disk_usage(self.directory).free
        except OSError:
            return  # unknown: Orbax's own error, if any, says what is wrong
        if free < needed:
            raise WorkdirError(
                f"cannot write checkpoint step {step} in {self.directory}: {os.strerror(errno.ENOSPC)} "
                f"({_mib(free)} free, a checkpoint needs about {_mib(needed)})"
            )

    def _write_error(self, step: int, e: Exception) -> WorkdirError:
        for tmp in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):  # this save's, never committed
            shutil.rmtree(tmp, ignore_errors=True)
        details = f" (Orbax's details in {self.log.path})" if self.log.flush() else ""
        return WorkdirError(f"cannot write checkpoint step {step} in {self.directory}: {_os_reason(e)}{details}")

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
        finally:
            self.log.detach()
            self.log.flush()
        step_dir = self.directory / str(step)
        if not step_dir.is_dir():
            raise WorkdirError(f"checkpoint step {step} did not commit in {self.directory}")
        if is_main_process():
            self._record(step, summary)
        barrier(f"harness-checkpoint-{step}-recorded")
        if not is_main_process():
            self.manager.reload()  # process 0 may have deleted steps
        self.last_saved = step

    def _record(self, step: int, summary: dict) -> None:
        """Writes the digest record of the committed ``step``, then applies retention."""
        self.digests.write(step, summary)
        self._retain()

    def _retain(self) -> None:
        """Removes every digested step that ``steps_to_keep`` does not keep among the good ones, and every
        undigested step of harness's below the newest good one (:meth:`_passed_undigested`)."""
        steps = self.good_steps()
        keep = steps_to_keep(self._good_records(steps), self.keep, self.keep_best)
        for step in steps:
            if step not in keep:
                self._remove(step, self.digests.known_problem(step))
        for step in self._passed_undigested(steps):
            self._remove(step, "no digest: its save was killed before it completed")

    def _passed_undigested(self, good: list[int]) -> list[int]:
        """Committed steps below the newest digested one that have no digest and that harness wrote: saves killed
        between Orbax's commit and the digest (e.g. a stop's, off the save grid), which no later save replaces.
        Saves complete in order, so one below a newer digested step never completes. Never restored anyway."""
        if not good:
            return []
        digested = set(good)
        return [
            s
            for s in self.manager.all_steps()
            if s < good[-1] and s not in digested and is_harness_step(self.directory / str(s), None)
        ]

    def _good_records(self, steps: list[int]) -> dict[int, dict]:
        """Digest records of the good steps retention needs: the newest ``keep`` and the ``keep_best`` most accurate
        good ones. Verifies only the candidates, newest (or most accurate) first, until it has found enough."""
        records = {s: self.record(s) or {} for s in steps}
        good: dict[int, dict] = {}

        def take(order, wanted: int) -> None:
            found = 0
            for s in order:
                if found >= wanted:
                    return
                if s in good or self.digests.problem(s) is None:
                    good[s], found = records[s], found + 1

        take(reversed(steps), self.keep)
        scored = [s for s in steps if records[s].get("test_accuracy") is not None]
        take(sorted(scored, key=lambda s: (records[s]["test_accuracy"], s), reverse=True), self.keep_best)
        return good

    def _remove(self, step: int, problem: str | None, then: str = "") -> None:
        """Takes ``step`` out of the listing (``harness.retention.remove_step``); warns unless it was a good step
        of harness's that retention dropped."""
        try:
            aside = remove_step(self.directory / str(step), self.digests.path(step), self.record(step))
        except OSError as e:
            raise WorkdirError(f"cannot remove checkpoint step {step} from {self.directory}: {_os_reason(e)}") from None
        self.digests.forget(step)
        if problem or aside is not None:
            done = f"moved it to {aside} (not a folder harness wrote: never deleted)" if aside else "deleted it"
            what = f" is not restorable ({problem})" if problem and problem != FOREIGN else ""
            self.warn(f"warning: checkpoint step {step}{what}: {done}{then}")
        self.manager.reload()

    # ---- restoring -----------------------------------------------------------------------------------------

    def restore(self, target: Any, step: int) -> tuple[Any, dict]:
        """Restores ``step`` shaped exactly like host ``target``; raises WorkdirError when it cannot
        (ForeignCheckpointError when the step was saved by another model)."""
        problem = self.verify(step)
        if problem:
            raise WorkdirError(f"checkpoint step {step}: {problem}")
        meta = self.read_meta(step)
        stored, wanted = meta.get("leaves"), _leaf_specs(target)
        if stored != wanted:
            if stored is None or len(stored) != len(wanted):
                raise ForeignCheckpointError(
                    f"checkpoint step {step} holds another structure: it belongs to another model"
                )
            got, want = next((g, w) for g, w in zip(stored, wanted, strict=True) if g != w)
            raise ForeignCheckpointError(
                f"checkpoint step {step} holds {got} where this model needs {want}: it belongs to another model"
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _stored(target))
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))  # meta was read above
        try:
            restored = self.manager.restore(step, args=args)
        except Exception as e:  # Orbax raises many types for unreadable data
            raise WorkdirError(f"checkpoint step {step} does not restore ({type(e).__name__}: {e})") from None
        state = jax.tree.map(np.asarray, restored.state)
        if _stored(target) is not target:  # a dataclass state, stored as the dict of its set fields
            state = dataclasses.replace(target, **state)
        if _leaf_specs(state) != wanted:
            raise WorkdirError(f"checkpoint step {step} restored with other shapes or dtypes than it recorded")
        return state, meta

    def restore_latest(self, target: Any) -> tuple[int, Any, dict] | None:
        """The newest step that verifies and restores, warning about each one skipped; None when there is none."""
        self.manager.reload()  # another process may have saved or deleted since
        committed = [s for s in self.manager.all_steps() if (self.directory / str(s)).is_dir()]
        good = set(self.good_steps())
        for step in sorted(set(committed) | good, reverse=True):
            try:
                state, meta = self.restore(target, step)
            except ForeignCheckpointError:
                raise
            except WorkdirError as e:
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
        self.manager.reload()
        steps = set(self.manager.all_steps()) | set(self.good_steps())
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
            self.log.attach()
            try:
                # Orbax's close() does not wait for the clean-up of temporary folders it starts when it opens:
                # a run refused right after opening (its workdir then removed) would get its traceback.
                getattr(self.manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()
                self.manager.close()
            finally:
                self.log.detach()
                self.log.flush()
