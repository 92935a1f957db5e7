"""The epoch/step loop: dispatches steps (bounded in flight, fused dispatches on global multiples, a polite stop
asked at every step) and calls the periodic actions of :mod:`harness.actions` and the hooks of :mod:`harness.hooks`."""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from harness import actions, parallel, preemption, profiling
from harness import hooks as hooks_lib
from harness.actions import Progress
from harness.build import Run
from harness.data import batches
from harness.errors import TrainingError
from harness.records import MetricRow, rows_of

__all__ = ["MAX_IN_FLIGHT", "Loop", "Progress", "evaluate"]

# Steps queued on the device before the loop waits for the oldest (XLA:CPU aborts with ~60+ collectives queued). A
# fused dispatch of more steps runs alone: the next is sent only once it is back. A stop is asked after each wait,
# so after a stop at most max(MAX_IN_FLIGHT, steps per dispatch) steps run before the save (one dispatch).
MAX_IN_FLIGHT = 8


def evaluate(par: parallel.Parallel, params: Any, data: dict, num_examples: int, batch_size: int) -> dict:
    """Loss and accuracy over a whole placed split (the last batch padded and masked)."""
    total = collections.Counter()
    pending: collections.deque = collections.deque()
    for s in range(batches.steps_per_epoch(num_examples, batch_size)):
        indices = par.shard_indices(batches.eval_indices(s, batch_size, num_examples))
        pending.append(par.eval_step(params, data, indices))
        if len(pending) > MAX_IN_FLIGHT:  # never queue unboundedly many collective steps
            total.update(par.metrics_to_host(pending.popleft()))
    for sums in pending:
        total.update(par.metrics_to_host(sums))
    count = total["count"]
    return {"test_loss": total["loss"] / count, "test_accuracy": total["correct"] / count, "test_examples": int(count)}


class Loop:
    """Runs epochs from ``progress.step`` to the end, calling its actions and hooks; stops early when
    ``stop(step)`` says so. ``ckpt``: the run's :class:`~harness.checkpoint.Checkpoints` (or one that has
    ``save``, ``poll``, ``finalize`` and ``last_saved``); ``clock``: seconds, for every timing."""

    def __init__(
        self,
        run: Run,
        ckpt: Any,
        progress: Progress,
        *,
        hooks: Sequence[hooks_lib.Hook] = (),
        print_fn: Callable[[str], Any] = print,
        clock: Callable[[], float] = time.perf_counter,
        stop: Callable[[int], str | None] = lambda step: None,
        started: float | None = None,
        profile_dir: Path | None = None,
    ):
        cfg = run.config
        self.run, self.ckpt, self.p, self.hooks = run, ckpt, progress, hooks_lib.Hooks(hooks)
        self.print, self.clock, self.stop = print_fn, clock, stop
        self.rows = actions.TrainRows(cfg.log_every_steps, run.steps_per_epoch, clock)
        self.evaluate = actions.Evaluate(run, cfg.eval_every_epochs, evaluate)
        self.checkpoint = actions.Checkpoint(
            run, ckpt, progress, cfg.checkpoint_every_steps, cfg.checkpoint_min_seconds, clock
        )
        self.target = actions.StopAtAccuracy(cfg.stop_at_accuracy)
        self.profile = profiling.Profile(profiling.parse_steps(cfg.profile_steps), profile_dir, print_fn)
        self.started = clock() if started is None else started  # for the time to the first finished step
        self.first_step_seconds: float | None = None
        self.epoch_started, self.epoch_examples = 0.0, 0.0

    @property
    def spe(self) -> int:
        return self.run.steps_per_epoch

    def row(self, row: MetricRow) -> None:
        self.p.history.append(row.to_dict())
        self.hooks.row(row)

    # ---- steps ---------------------------------------------------------------------------------------------

    def _complete(self, step: int, device_sums: Any) -> None:
        """A step is back from the device: its sums are added, and a train row is written when one is due."""
        sums = self.run.par.metrics_to_host(device_sums)
        if not math.isfinite(sums["loss"]):
            last = f"step {self.ckpt.last_saved}" if self.ckpt.last_saved is not None else "none yet"
            raise TrainingError(
                f"non-finite training loss ({sums['loss']}) at step {step}, epoch {(step - 1) // self.spe + 1}; "
                f"last good checkpoint: {last}. Try a lower config.learning_rate or config.dtype=float32"
            )
        self.p.sums.add(sums)
        self.epoch_examples += sums["count"]
        self.hooks.steps_done(int(sums["count"]), sums["loss"] / max(sums["count"], 1.0))
        row = self.rows(step, self.p.sums)
        if row is not None:
            self.row(row)

    def _drain(self, pending: collections.deque) -> None:
        while pending:
            step, _, device_sums = pending.popleft()
            self._complete(step, device_sums)

    def _steps_here(self, s: int) -> int:
        """Steps in the dispatch starting at step ``s`` of the epoch: ``steps_per_dispatch`` when the global step is
        a multiple of it and the epoch has that many left, else 1 — a pure function of the position, so a resumed
        run runs every step in the same program as a straight one (rows and checkpoints fall on multiples)."""
        k = self.run.steps_per_dispatch
        return k if k > 1 and self.p.step % k == 0 and s + k <= self.spe else 1

    def _indices(self, epoch: int, s: int) -> tuple[int, Any]:
        """(k, the placed indices of steps ``s`` … ``s + k - 1`` of ``epoch``): host work done while the device runs
        the dispatch before."""
        run, cfg, k = self.run, self.run.config, self._steps_here(s)
        order = [batches.batch_indices(cfg.seed, epoch, i, cfg.batch_size, run.num_train) for i in range(s, s + k)]
        return k, run.par.shard_indices(order[0] if k == 1 else np.stack(order))

    def _dispatch(self, state: Any, k: int, indices: Any) -> tuple[Any, Any]:
        """Runs ``k`` steps on placed ``indices`` in one device call; returns the state and the summed sums."""
        par = self.run.par
        if k == 1:
            state, device_sums = par.train_step(state, self.run.train, indices)
        else:
            state, device_sums = par.train_steps(state, self.run.train, indices)
        if self.first_step_seconds is None:  # one wait, once per run
            jax.block_until_ready(device_sums)
            self.first_step_seconds = self.clock() - self.started
        return state, device_sums

    def _make_room(self, pending: collections.deque, k: int) -> None:
        """Waits for the oldest dispatches until ``k`` more steps may be queued: at most ``MAX_IN_FLIGHT`` steps in
        flight, or one dispatch alone when it has more."""
        while pending and sum(n for _, n, _ in pending) + k > max(MAX_IN_FLIGHT, k):
            step, _, device_sums = pending.popleft()
            self._complete(step, device_sums)

    def _stop_asked(self, k: int) -> bool:
        """Whether a stop was asked at any of the last ``k`` steps (asked for each: processes agree per step)."""
        return any([self.stop(step) for step in range(self.p.step - k + 1, self.p.step + 1)])

    # ---- epochs --------------------------------------------------------------------------------------------

    def epoch(self, state: Any, epoch: int) -> tuple[Any, bool]:
        """Trains the rest of ``epoch``; returns the state and whether a stop request ended it early (saved)."""
        run = self.run
        first = self.p.step - epoch * self.spe
        self.hooks.epoch_start(epoch, run.num_train, min(first * run.config.batch_size, run.num_train))
        self.epoch_started, self.epoch_examples, pending = self.clock(), 0.0, collections.deque()
        s, upcoming = first, self._indices(epoch, first)
        while s < self.spe:
            k, indices = upcoming
            self.profile.before(self.p.step + 1, k)
            state, device_sums = self._dispatch(state, k, indices)
            s, self.p.step = s + k, self.p.step + k
            self.profile.after(self.p.step, device_sums)
            self.ckpt.poll()
            pending.append((self.p.step, k, device_sums))
            upcoming = self._indices(epoch, s) if s < self.spe else (0, None)
            self._make_room(pending, upcoming[0])  # the stop is asked after the wait: no dispatch is sent after it
            stopped = self._stop_asked(k)
            if s < self.spe and (stopped or self.checkpoint.due(self.p.step)):  # the epoch's end saves anyway
                self._drain(pending)
                self.checkpoint.save(state)
                if stopped:
                    return state, True
        self._drain(pending)
        return state, False

    def end_epoch(self, state: Any, epoch: int) -> tuple[MetricRow, dict]:
        """The epoch's row (evaluated when due), written, and the state saved when due (always when the run ends
        here: the last epoch, the target accuracy reached, or a stop asked); returns the row and the test sums."""
        seconds = self.clock() - self.epoch_started
        self.p.train_seconds += seconds
        sums, test = self.p.sums.take_epoch(), self.evaluate(state, epoch + 1)
        row = MetricRow(
            kind="eval" if test else "train",
            step=self.p.step,
            epoch=epoch + 1,
            train_loss=sums["loss"] / sums["count"],
            examples_per_sec=self.epoch_examples / seconds if seconds > 0 else math.nan,
            epoch_seconds=seconds,
            test_loss=test.get("test_loss"),
            test_accuracy=test.get("test_accuracy"),
        )
        self.row(row)
        ends = epoch + 1 == self.run.config.num_epochs or self.target.reached(row) or bool(self.stop(self.p.step))
        self.checkpoint.epoch_end(state, row.test_accuracy, ends)
        self.hooks.epoch_end(epoch, row)
        return row, test

    # ---- the run -------------------------------------------------------------------------------------------

    def _compile(self, state: Any) -> None:
        run = self.run
        indices = run.par.shard_indices(batches.eval_indices(0, run.config.batch_size, run.num_test))
        k = run.steps_per_dispatch
        seconds = run.par.compile(state, run.train, run.test, indices, k)
        fused = f", {k} steps per dispatch" if k > 1 else ""
        self.print(
            f"compiling… {seconds:.1f} s (train and eval steps, {run.par.kind} on {run.par.num_devices} device(s)"
            f"{fused})"
        )

    def __call__(self) -> dict:
        """Trains to the end (or a stop, or the target accuracy); returns the summary."""
        try:
            return self._train()
        finally:
            self.profile.close()  # a trace still running when the run ends or fails is stopped and summarised

    def _train(self) -> dict:
        run, cfg = self.run, self.run.config
        self.hooks.train_start({"config": cfg, "devices": run.par.num_devices, "step": self.p.step})
        state, extra = run.state, {}
        self._compile(state)
        preemption.steps_started()  # a stop asked before now ended the run at once (nothing to save)
        self.rows.restart()
        self.checkpoint.last_save_at = self.clock()  # the first epoch-end save is timed from the first step
        for epoch in range(self.p.step // self.spe, cfg.num_epochs):
            state, stopped = self.epoch(state, epoch)
            if stopped:
                return self._stopped()
            row, test = self.end_epoch(state, epoch)
            extra = {**row.to_dict(), **test}
            if self.target.reached(row):
                extra["reached_target_epoch"] = epoch + 1
                break
            if self.stop(self.p.step) and epoch + 1 < cfg.num_epochs:
                return self._stopped()
        return self._finished(extra)

    def _finished(self, last: dict) -> dict:
        evals = rows_of(self.p.history, "eval")
        summary = {**(evals[-1] if evals else {}), **last, "step": self.p.step}
        summary.pop("kind", None)
        summary.update(train_seconds=self.p.train_seconds, compilations=dict(self.run.par.traces))
        summary["time_to_first_step_seconds"] = self.first_step_seconds
        self.hooks.train_end(summary)
        return summary

    def _stopped(self) -> dict:
        self.ckpt.finalize()
        summary = {"step": self.p.step, "stopped": self.stop(self.p.step), "train_seconds": self.p.train_seconds}
        self.hooks.train_end(summary)
        return summary
