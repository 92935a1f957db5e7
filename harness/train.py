"""``train_and_evaluate(config, workdir)``: the training loop, calling hooks for every side effect."""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from harness import config as config_lib
from harness import hooks as hooks_lib
from harness import models, parallel, steps
from harness.checkpoint import Checkpoints, fingerprint
from harness.data import batches, datasets
from harness.errors import TrainingError

MAX_IN_FLIGHT = 8  # steps queued on the device before the loop waits (XLA:CPU aborts with ~60+ collectives queued)


@dataclasses.dataclass
class Run:
    """What the loop works with: placed data and state, the strategy, and the batch geometry."""

    config: ml_collections.ConfigDict
    par: parallel.Parallel
    state: Any
    train: dict
    test: dict
    num_train: int
    num_test: int
    steps_per_epoch: int


def setup(config: ml_collections.ConfigDict, print_fn: Callable[[str], Any] = print) -> Run:
    """Validates the config, prepares and places the data, builds the model, the state and the step wrappers."""
    devices = parallel.select_devices(config.num_devices)
    config_lib.validate(config, len(devices))
    builder, source = datasets.ensure_prepared(config.dataset, config.data_dir or None)
    print_fn(f"training {config.model} on {config.dataset} ({source})")
    train, test = datasets.load_split(builder, "train"), datasets.load_split(builder, "test")
    spe = batches.steps_per_epoch(len(train), config.batch_size)
    tx = steps.make_optimizer(config, spe)
    graphdef, state = steps.init_state(models.create(config), tx)
    par = parallel.Parallel(config.parallel, devices, graphdef, tx)
    place = par.replicate
    return Run(
        config=config,
        par=par,
        state=place(state),
        train=place({"image": train.images, "label": train.labels}),
        test=place({"image": test.images, "label": test.labels}),
        num_train=len(train),
        num_test=len(test),
        steps_per_epoch=spe,
    )


def evaluate(par: parallel.Parallel, params: Any, data: dict, num_examples: int, batch_size: int) -> dict:
    """Loss and accuracy over a whole placed split (the last batch padded and masked)."""
    total = collections.Counter()
    pending: collections.deque = collections.deque()
    for s in range(batches.steps_per_epoch(num_examples, batch_size)):
        pending.append(
            par.eval_step(params, data, par.shard_indices(batches.eval_indices(s, batch_size, num_examples)))
        )
        if len(pending) > MAX_IN_FLIGHT:  # never queue unboundedly many collective steps
            total.update(par.metrics_to_host(pending.popleft()))
    for sums in pending:
        total.update(par.metrics_to_host(sums))
    count = total["count"]
    return {"test_loss": total["loss"] / count, "test_accuracy": total["correct"] / count, "test_examples": int(count)}


class _Window:
    """Train metrics of completed steps since the last train row."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self.sums = collections.Counter()
        self.start = self.clock()

    def row(self, step: int, epoch: float) -> dict:
        elapsed = self.clock() - self.start
        count = self.sums["count"]
        return {
            "step": step,
            "epoch": epoch,
            "train_loss": self.sums["loss"] / count,
            "train_accuracy": self.sums["correct"] / count,
            "examples_per_sec": count / elapsed if elapsed > 0 else math.nan,
        }


def _check_finite(sums: dict, step: int, epoch: int) -> None:
    if not math.isfinite(sums["loss"]):
        raise TrainingError(
            f"non-finite training loss ({sums['loss']}) at step {step}, epoch {epoch + 1}: "
            "try a lower config.learning_rate or config.dtype=float32"
        )


def default_hooks(config, workdir: Path, print_fn: Callable[[str], Any] = print) -> list[hooks_lib.Hook]:
    """Metrics file, TensorBoard, progress bar and console lines."""
    return [
        hooks_lib.MetricsFile(workdir),
        hooks_lib.TensorBoard(workdir),
        hooks_lib.ProgressBar(config.num_epochs),
        hooks_lib.Console(config.num_epochs, print_fn),
    ]


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    hooks: Sequence[hooks_lib.Hook] | None = None,
    print_fn: Callable[[str], Any] = print,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """Trains ``config`` into ``workdir`` and returns the final evaluation (``test_accuracy``, ``test_loss``…)."""
    workdir = Path(workdir).resolve()
    run = setup(config, print_fn)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    hooks = default_hooks(config, workdir, print_fn) if hooks is None else list(hooks)
    ckpt = Checkpoints(workdir)
    try:
        return _Loop(run, hooks, ckpt, print_fn, clock)()
    finally:
        ckpt.close()


class _Loop:
    """The epoch/step loop over a :class:`Run`, with at most ``MAX_IN_FLIGHT`` steps queued on the device."""

    def __init__(self, run: Run, hooks, ckpt: Checkpoints, print_fn, clock):
        self.run, self.hooks, self.ckpt, self.print, self.clock = run, hooks, ckpt, print_fn, clock
        self.window = _Window(clock)

    def emit(self, event: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, event)(*args)

    def _complete(self, step: int, device_sums: Any, epoch: int, epoch_sums: collections.Counter) -> None:
        sums = self.run.par.metrics_to_host(device_sums)
        _check_finite(sums, step, epoch)
        self.window.sums.update(sums)
        epoch_sums.update(sums)
        self.emit("on_steps_done", int(sums["count"]), sums["loss"] / max(sums["count"], 1.0))
        if step % self.run.config.log_every_steps == 0:
            spe = self.run.steps_per_epoch
            self.emit("on_row", self.window.row(step, epoch + (step - epoch * spe) / spe))
            self.window.reset()

    def epoch(self, state: Any, epoch: int) -> tuple[Any, dict]:
        """Trains one epoch; returns the state and the epoch's row (train metrics, throughput)."""
        run, par = self.run, self.run.par
        cfg = run.config
        self.emit("on_epoch_start", epoch, run.num_train)
        start, sums, pending = self.clock(), collections.Counter(), collections.deque()
        step = epoch * run.steps_per_epoch
        for s in range(run.steps_per_epoch):
            indices = par.shard_indices(batches.batch_indices(cfg.seed, epoch, s, cfg.batch_size, run.num_train))
            state, device_sums = par.train_step(state, run.train, indices)
            step += 1
            pending.append((step, device_sums))
            while len(pending) > MAX_IN_FLIGHT:
                self._complete(*pending.popleft(), epoch, sums)
        while pending:
            self._complete(*pending.popleft(), epoch, sums)
        seconds = self.clock() - start
        row = {
            "step": step,
            "epoch": epoch + 1,
            "train_loss": sums["loss"] / sums["count"],
            "examples_per_sec": sums["count"] / seconds,
            "epoch_seconds": seconds,
        }
        return state, row

    def save(self, state: Any, row: dict) -> None:
        meta = {
            "epoch": row["epoch"],
            "step": row["step"],
            "metrics": row,
            "fingerprint": fingerprint(),
            "config": json.loads(self.run.config.to_json_best_effort()),
        }
        self.ckpt.save(row["step"], self.run.par.unreplicate(state), meta)

    def __call__(self) -> dict:
        run, cfg = self.run, self.run.config
        self.emit("on_train_start", {"config": cfg, "devices": run.par.num_devices})
        start, state, train_seconds = self.clock(), run.state, 0.0
        indices = run.par.shard_indices(batches.eval_indices(0, cfg.batch_size, run.num_test))
        seconds = run.par.compile(state, run.train, run.test, indices)
        self.print(
            f"compiling… {seconds:.1f} s (train and eval steps, {run.par.kind} on {run.par.num_devices} device(s))"
        )
        self.window.reset()
        for epoch in range(cfg.num_epochs):
            state, row = self.epoch(state, epoch)
            train_seconds += row["epoch_seconds"]
            if (epoch + 1) % cfg.eval_every_epochs == 0 or epoch + 1 == cfg.num_epochs:
                row.update(evaluate(run.par, state.params, run.test, run.num_test, cfg.batch_size))
                self.emit("on_row", {k: v for k, v in row.items() if k != "test_examples"})
                self.save(state, row)
            self.emit("on_epoch_end", epoch, row)
        summary = {**row, "train_seconds": train_seconds, "wall_seconds": self.clock() - start}
        summary["compilations"] = dict(run.par.traces)
        self.emit("on_train_end", summary)
        return summary
