"""The epoch/step loop: bounded in-flight steps, metric rows, periodic checkpoints, polite stops."""

from __future__ import annotations

import collections
import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from harness import parallel
from harness.build import Run
from harness.checkpoint import Checkpoints, fingerprint
from harness.data import batches
from harness.errors import TrainingError

MAX_IN_FLIGHT = 8  # steps queued on the device before the loop waits (XLA:CPU aborts with ~60+ collectives queued)
TIMING_KEYS = ("examples_per_sec", "epoch_seconds")  # the only row fields that differ between identical runs


@dataclasses.dataclass
class Progress:
    """Everything besides the train state that a resumed run needs to continue exactly (saved in checkpoints)."""

    step: int = 0
    history: list = dataclasses.field(default_factory=list)
    epoch_sums: dict = dataclasses.field(default_factory=dict)
    window_sums: dict = dataclasses.field(default_factory=dict)
    train_seconds: float = 0.0

    @classmethod
    def from_meta(cls, meta: dict) -> Progress:
        return cls(**{f.name: meta[f.name] for f in dataclasses.fields(cls)})


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
    """Runs epochs from ``progress.step`` to the end, emitting hook events; stops early when ``stop(step)`` says so."""

    def __init__(
        self,
        run: Run,
        hooks: list,
        ckpt: Checkpoints,
        progress: Progress,
        print_fn: Callable[[str], Any],
        clock: Callable[[], float],
        stop: Callable[[int], str | None] = lambda step: None,
        started: float | None = None,
    ):
        self.run, self.hooks, self.ckpt, self.p = run, hooks, ckpt, progress
        self.print, self.clock, self.stop = print_fn, clock, stop
        self.epoch_sums = collections.Counter(progress.epoch_sums)
        self.window_sums = collections.Counter(progress.window_sums)
        self.window_start = clock()
        self.examples_here = 0.0
        self.started = clock() if started is None else started  # for the time to the first finished step
        self.first_step_seconds: float | None = None

    def emit(self, event: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, event)(*args)

    def row(self, row: dict) -> None:
        self.p.history.append(row)
        self.emit("on_row", row)

    # ---- one step at a time ---------------------------------------------------------------------------------

    def _complete(self, step: int, device_sums: Any) -> None:
        sums = self.run.par.metrics_to_host(device_sums)
        if not math.isfinite(sums["loss"]):
            last = f"step {self.ckpt.last_saved}" if self.ckpt.last_saved is not None else "none yet"
            raise TrainingError(
                f"non-finite training loss ({sums['loss']}) at step {step}, epoch {(step - 1) // self.spe + 1}; "
                f"last good checkpoint: {last}. Try a lower config.learning_rate or config.dtype=float32"
            )
        self.window_sums.update(sums)
        self.epoch_sums.update(sums)
        self.examples_here += sums["count"]
        self.emit("on_steps_done", int(sums["count"]), sums["loss"] / max(sums["count"], 1.0))
        if step % self.run.config.log_every_steps == 0:
            now, count = self.clock(), self.window_sums["count"]
            elapsed = now - self.window_start
            self.row(
                {
                    "step": step,
                    "epoch": (step - 1) // self.spe + ((step - 1) % self.spe + 1) / self.spe,
                    "train_loss": self.window_sums["loss"] / count,
                    "train_accuracy": self.window_sums["correct"] / count,
                    "examples_per_sec": count / elapsed if elapsed > 0 else math.nan,
                }
            )
            self.window_sums, self.window_start = collections.Counter(), now

    @property
    def spe(self) -> int:
        return self.run.steps_per_epoch

    def _drain(self, pending: collections.deque) -> None:
        while pending:
            self._complete(*pending.popleft())

    def save(self, state: Any, extra: dict | None = None) -> None:
        """Saves the state at ``self.p.step`` with everything needed to continue from exactly there."""
        self.p.epoch_sums, self.p.window_sums = dict(self.epoch_sums), dict(self.window_sums)
        meta = {
            **dataclasses.asdict(self.p),
            "epoch": self.p.step // self.spe,
            "step_in_epoch": self.p.step % self.spe,
            "steps_per_epoch": self.spe,
            "num_train": self.run.num_train,
            "config": json.loads(self.run.config.to_json_best_effort()),
            "fingerprint": fingerprint(self.run.par.num_devices),
            "plan": self.run.plan.to_dict(),
            **(extra or {}),
        }
        self.ckpt.save(self.p.step, self.run.par.unreplicate(state), meta)

    # ---- epochs --------------------------------------------------------------------------------------------

    def _steps_here(self, s: int) -> int:
        """Steps in the dispatch starting at step ``s`` of the epoch: ``steps_per_dispatch`` when the global step is
        a multiple of it and the epoch has that many left, else 1 — a pure function of the position, so a resumed
        run runs every step in the same program as a straight one (rows and checkpoints fall on multiples)."""
        k = self.run.steps_per_dispatch
        return k if k > 1 and self.p.step % k == 0 and s + k <= self.spe else 1

    def _dispatch(self, state: Any, epoch: int, s: int, k: int) -> tuple[Any, Any]:
        """Runs steps ``s`` … ``s + k - 1`` of ``epoch`` in one device call; returns the state and the summed sums."""
        run, par, cfg = self.run, self.run.par, self.run.config
        order = [batches.batch_indices(cfg.seed, epoch, i, cfg.batch_size, run.num_train) for i in range(s, s + k)]
        if k == 1:
            state, device_sums = par.train_step(state, run.train, par.shard_indices(order[0]))
        else:
            state, device_sums = par.train_steps(state, run.train, par.shard_indices(np.stack(order)))
        if self.first_step_seconds is None:  # one wait, once per run
            jax.block_until_ready(device_sums)
            self.first_step_seconds = self.clock() - self.started
        return state, device_sums

    def epoch(self, state: Any, epoch: int) -> tuple[Any, dict | None]:
        """Trains the rest of ``epoch``; returns the state and the epoch's row (None when stopped early)."""
        run, cfg = self.run, self.run.config
        first = self.p.step - epoch * self.spe
        self.emit("on_epoch_start", epoch, run.num_train, min(first * cfg.batch_size, run.num_train))
        start, pending = self.clock(), collections.deque()
        self.examples_here = 0.0
        s = first
        while s < self.spe:
            k = self._steps_here(s)
            state, device_sums = self._dispatch(state, epoch, s, k)
            s += k
            self.p.step += k
            self.ckpt.poll()
            pending.append((self.p.step, device_sums))
            while len(pending) > MAX_IN_FLIGHT:
                self._complete(*pending.popleft())
            last_step = s == self.spe
            stopped = [self.stop(step) for step in range(self.p.step - k + 1, self.p.step + 1)]  # asked for each
            if any(stopped) and not last_step:
                self._drain(pending)
                self.save(state)
                return state, None
            if cfg.checkpoint_every_steps and self.p.step % cfg.checkpoint_every_steps == 0 and not last_step:
                self._drain(pending)
                self.save(state)
        self._drain(pending)
        seconds = self.clock() - start
        self.p.train_seconds += seconds
        row = {
            "step": self.p.step,
            "epoch": epoch + 1,
            "train_loss": self.epoch_sums["loss"] / self.epoch_sums["count"],
            "examples_per_sec": self.examples_here / seconds if seconds > 0 else math.nan,
            "epoch_seconds": seconds,
        }
        self.epoch_sums = collections.Counter()
        return state, row

    def __call__(self) -> dict:
        run, cfg = self.run, self.run.config
        self.emit("on_train_start", {"config": cfg, "devices": run.par.num_devices, "step": self.p.step})
        state, row = run.state, None
        indices = run.par.shard_indices(batches.eval_indices(0, cfg.batch_size, run.num_test))
        k = run.steps_per_dispatch
        seconds = run.par.compile(state, run.train, run.test, indices, k)
        fused = f", {k} steps per dispatch" if k > 1 else ""
        self.print(
            f"compiling… {seconds:.1f} s (train and eval steps, {run.par.kind} on {run.par.num_devices} device(s)"
            f"{fused})"
        )
        self.window_start = self.clock()
        for epoch in range(self.p.step // self.spe, cfg.num_epochs):
            state, row = self.epoch(state, epoch)
            if row is None:
                return self._stopped()
            extra = {}
            if (epoch + 1) % cfg.eval_every_epochs == 0 or epoch + 1 == cfg.num_epochs:
                row.update(evaluate(run.par, state.params, run.test, run.num_test, cfg.batch_size))
                extra = {"test_accuracy": row["test_accuracy"]}
            self.row({k: v for k, v in row.items() if k != "test_examples"})
            self.save(state, extra)
            self.emit("on_epoch_end", epoch, row)
            if cfg.stop_at_accuracy and row.get("test_accuracy", 0.0) >= cfg.stop_at_accuracy:
                row["reached_target_epoch"] = epoch + 1
                break
            if self.stop(self.p.step) and epoch + 1 < cfg.num_epochs:
                return self._stopped()
        evals = [r for r in self.p.history if "test_accuracy" in r]
        summary = {**(evals[-1] if evals else {}), **(row or {}), "step": self.p.step}
        summary.update(train_seconds=self.p.train_seconds, compilations=dict(run.par.traces))
        summary["time_to_first_step_seconds"] = self.first_step_seconds
        self.emit("on_train_end", summary)
        return summary

    def _stopped(self) -> dict:
        self.ckpt.finalize()
        summary = {"step": self.p.step, "stopped": self.stop(self.p.step), "train_seconds": self.p.train_seconds}
        self.emit("on_train_end", summary)
        return summary
