"""The loop's periodic actions, each with an explicit cadence: train rows, evaluation, checkpoints, stop at accuracy.

The loop (:class:`harness.loop.Loop`) dispatches steps and asks each action whether it is due: :class:`TrainRows`
every ``log_every_steps`` completed steps, :class:`Evaluate` every ``eval_every_epochs`` epochs and at the end,
:class:`Checkpoint` every ``checkpoint_every_steps`` steps, at an epoch's end (at most every
``checkpoint_min_seconds``, always at the last) and on a stop, :class:`StopAtAccuracy` after each evaluation.
The running sums have one owner, :class:`Sums`, inside :class:`Progress`: the loop adds to them, the rows take
them, the checkpoint saves them.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from harness import steps
from harness.checkpoint import fingerprint
from harness.records import CheckpointMeta, MetricRow

if TYPE_CHECKING:
    from harness.build import Run


@dataclasses.dataclass(frozen=True)
class Cadence:
    """When an action is due: every ``every_steps`` steps, every ``every_epochs`` epochs, at the last epoch."""

    every_steps: int = 0
    every_epochs: int = 0
    at_end: bool = False

    def at_step(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def at_epoch(self, epochs_done: int, last: bool) -> bool:
        return (self.every_epochs > 0 and epochs_done % self.every_epochs == 0) or (self.at_end and last)


class Sums:
    """The running sums of the train metrics (loss, correct, count): of the epoch and of the unlogged window."""

    def __init__(self, epoch: dict | None = None, window: dict | None = None):
        self.epoch = collections.Counter(epoch or {})
        self.window = collections.Counter(window or {})

    def add(self, sums: dict) -> None:
        self.epoch.update(sums)
        self.window.update(sums)

    def take_window(self) -> collections.Counter:
        """The window's sums; the next window starts empty."""
        window, self.window = self.window, collections.Counter()
        return window

    def take_epoch(self) -> collections.Counter:
        """The epoch's sums; the next epoch starts empty."""
        epoch, self.epoch = self.epoch, collections.Counter()
        return epoch


@dataclasses.dataclass
class Progress:
    """Everything besides the train state that a resumed run needs to continue exactly (saved in checkpoints)."""

    step: int = 0
    history: list = dataclasses.field(default_factory=list)
    sums: Sums = dataclasses.field(default_factory=Sums)
    train_seconds: float = 0.0

    @classmethod
    def from_meta(cls, meta: CheckpointMeta) -> Progress:
        return cls(meta.step, meta.history, Sums(meta.epoch_sums, meta.window_sums), meta.train_seconds)


class TrainRows:
    """A "train" row every ``every_steps`` completed steps: the window's loss, accuracy and examples per second."""

    def __init__(self, every_steps: int, steps_per_epoch: int, clock: Callable[[], float]):
        self.cadence, self.spe, self.clock = Cadence(every_steps=every_steps), steps_per_epoch, clock
        self.window_start = 0.0

    def restart(self) -> None:
        """Starts timing the window now (after compilation)."""
        self.window_start = self.clock()

    def __call__(self, step: int, sums: Sums) -> MetricRow | None:
        if not self.cadence.at_step(step):
            return None
        now, window = self.clock(), sums.take_window()
        count, elapsed = window["count"], now - self.window_start
        self.window_start = now
        return MetricRow(
            kind="train",
            step=step,
            epoch=(step - 1) // self.spe + ((step - 1) % self.spe + 1) / self.spe,
            train_loss=window["loss"] / count,
            train_accuracy=window["correct"] / count,
            examples_per_sec=count / elapsed if elapsed > 0 else math.nan,
        )


class Evaluate:
    """The test split's loss and accuracy every ``every_epochs`` epochs and after the last."""

    def __init__(self, run: Run, every_epochs: int, evaluate: Callable[..., dict]):
        self.run, self.cadence, self.evaluate = run, Cadence(every_epochs=every_epochs, at_end=True), evaluate

    def __call__(self, state: Any, epochs_done: int) -> dict:
        """``test_loss``, ``test_accuracy``, ``test_examples`` when due, else {}."""
        run = self.run
        if not self.cadence.at_epoch(epochs_done, last=epochs_done == run.config.num_epochs):
            return {}
        return self.evaluate(run.par, steps.inference(state), run.test, run.num_test, run.config.batch_size)


class Checkpoint:
    """Saves the state with its :class:`CheckpointMeta` every ``every_steps`` steps, when a stop is requested, and at
    an epoch's end (:meth:`epoch_end`) when the last save is ``min_seconds`` old by ``clock``, or the run ends there.

    Why a minimum age: a save costs tens of milliseconds of CPU however small the state (Orbax's writer threads,
    files, digest); a model whose epoch lasts 0.2 s would spend a fifth of its time saving. Several processes
    save at every epoch's end (their clocks differ; they must save together)."""

    def __init__(
        self, run: Run, ckpt: Any, progress: Progress, every_steps: int, min_seconds: float, clock: Callable[[], float]
    ):
        self.run, self.ckpt, self.p, self.clock = run, ckpt, progress, clock
        self.cadence = Cadence(every_steps=every_steps, every_epochs=1)
        self.min_seconds = min_seconds if getattr(run.plan, "processes", 1) == 1 else 0.0
        self.last_save_at = clock()

    def due(self, step: int) -> bool:
        return self.cadence.at_step(step)

    def epoch_end(self, state: Any, test_accuracy: float | None, ends: bool) -> bool:
        """Saves at an epoch's end when the run ``ends`` there or the last save is old enough; True if it saved."""
        if not ends and self.clock() - self.last_save_at < self.min_seconds:
            return False
        self.save(state, test_accuracy)
        return True

    def meta(self, test_accuracy: float | None = None) -> CheckpointMeta:
        """The metadata of the progress now: with it a run continues exactly from ``progress.step``."""
        p, run, spe = self.p, self.run, self.run.steps_per_epoch
        return CheckpointMeta(
            step=p.step,
            history=p.history,
            epoch_sums=dict(p.sums.epoch),
            window_sums=dict(p.sums.window),
            train_seconds=p.train_seconds,
            epoch=p.step // spe,
            step_in_epoch=p.step % spe,
            steps_per_epoch=spe,
            num_train=run.num_train,
            config=json.loads(run.config.to_json_best_effort()),
            fingerprint=fingerprint(run.par.num_devices),
            plan=run.plan.to_dict(),
            test_accuracy=test_accuracy,
        )

    def save(self, state: Any, test_accuracy: float | None = None) -> None:
        self.ckpt.save(self.p.step, self.run.par.unreplicate(state), self.meta(test_accuracy).to_dict())
        self.last_save_at = self.clock()


class StopAtAccuracy:
    """Ends training after an evaluation reaching ``target`` (0: never)."""

    def __init__(self, target: float):
        self.target = target

    def reached(self, row: MetricRow) -> bool:
        return bool(self.target) and (row.test_accuracy or 0.0) >= self.target
