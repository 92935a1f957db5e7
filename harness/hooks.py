"""Side effects of the training loop, as hooks: metric files, TensorBoard, the progress bar, console lines.

The loop calls them through :class:`Hooks`, a typed fan-out: ``on_train_start``, ``on_epoch_start``,
``on_steps_done`` (as completed steps come back from the device), ``on_row`` (a :class:`~harness.records.MetricRow`,
train or eval), ``on_epoch_end`` and ``on_train_end``. A hook subclasses :class:`Hook` and overrides what it needs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from harness.records import MetricRow


class Hook:
    """Base class: every event is a no-op."""

    def on_train_start(self, run: dict) -> None: ...

    def on_epoch_start(self, epoch: int, num_examples: int, done: int) -> None: ...

    def on_steps_done(self, examples: int, train_loss: float) -> None: ...

    def on_row(self, row: MetricRow) -> None: ...

    def on_epoch_end(self, epoch: int, row: MetricRow) -> None: ...

    def on_train_end(self, summary: dict) -> None: ...


class Hooks:
    """The loop's side of its hooks: each event goes to every hook, in order."""

    def __init__(self, hooks: Sequence[Hook] = ()):
        self.hooks = list(hooks)

    def train_start(self, run: dict) -> None:
        for hook in self.hooks:
            hook.on_train_start(run)

    def epoch_start(self, epoch: int, num_examples: int, done: int) -> None:
        for hook in self.hooks:
            hook.on_epoch_start(epoch, num_examples, done)

    def steps_done(self, examples: int, train_loss: float) -> None:
        for hook in self.hooks:
            hook.on_steps_done(examples, train_loss)

    def row(self, row: MetricRow) -> None:
        for hook in self.hooks:
            hook.on_row(row)

    def epoch_end(self, epoch: int, row: MetricRow) -> None:
        for hook in self.hooks:
            hook.on_epoch_end(epoch, row)

    def train_end(self, summary: dict) -> None:
        for hook in self.hooks:
            hook.on_train_end(summary)


class MetricsFile(Hook):
    """Appends every row to ``WORKDIR/metrics.jsonl`` (one JSON object per line, flushed)."""

    def __init__(self, workdir: Path):
        self.path = Path(workdir) / "metrics.jsonl"
        self._file = None

    def on_train_start(self, run: dict) -> None:
        self._file = self.path.open("a", encoding="utf-8")

    def on_row(self, row: MetricRow) -> None:
        self._file.write(json.dumps(row.to_dict(), sort_keys=True) + "\n")
        self._file.flush()

    def on_train_end(self, summary: dict) -> None:
        if self._file:
            self._file.close()
            self._file = None


class TensorBoard(Hook):
    """Writes every numeric field of every row as a TensorBoard scalar (``train/…``, ``test/…``)."""

    def __init__(self, workdir: Path):
        self.logdir = Path(workdir) / "tensorboard"
        self._writer = None

    def on_train_start(self, run: dict) -> None:
        from tensorboardX import SummaryWriter

        # On resume, TensorBoard drops what an earlier process wrote after the checkpoint (it is written again).
        purge = run.get("step") + 1 if run.get("step") else None
        self._writer = SummaryWriter(str(self.logdir), purge_step=purge)

    def on_row(self, row: MetricRow) -> None:
        for key, value in row.scalars().items():
            tag = key.replace("train_", "train/", 1).replace("test_", "test/", 1)
            self._writer.add_scalar(tag, value, row.step)

    def on_train_end(self, summary: dict) -> None:
        if self._writer:
            self._writer.close()
            self._writer = None


class ProgressBar(Hook):
    """A tqdm bar per epoch with examples/s, ETA and the running train loss (hidden when not a terminal)."""

    def __init__(self, num_epochs: int, disable: bool | None = None):
        self.num_epochs = num_epochs
        self.disable = disable
        self._bar = None

    def on_epoch_start(self, epoch: int, num_examples: int, done: int) -> None:
        self._bar = tqdm(
            total=num_examples,
            initial=done,
            desc=f"epoch {epoch + 1}/{self.num_epochs}",
            unit="ex",
            unit_scale=True,
            leave=False,
            disable=self.disable,
            dynamic_ncols=True,
        )

    def on_steps_done(self, examples: int, train_loss: float) -> None:
        self._bar.update(examples)
        self._bar.set_postfix_str(f"loss {train_loss:.4f}", refresh=False)

    def on_epoch_end(self, epoch: int, row: MetricRow) -> None:
        self._bar.close()

    def on_train_end(self, summary: dict) -> None:
        if self._bar is not None:
            self._bar.close()


class Console(Hook):
    """One line per epoch and a closing summary, through ``print_fn``."""

    def __init__(self, num_epochs: int, print_fn: Callable[[str], Any] = print):
        self.num_epochs = num_epochs
        self.print = print_fn

    def on_epoch_end(self, epoch: int, row: MetricRow) -> None:
        test = ""
        if row.kind == "eval":
            test = f"test_loss {row.test_loss:.4f}  test_accuracy {row.test_accuracy:.4f}  "
        self.print(
            f"epoch {epoch + 1}/{self.num_epochs}: train_loss {row.train_loss:.4f}  {test}"
            f"{_si(row.examples_per_sec)} ex/s  {row.epoch_seconds:.1f} s"
        )

    def on_train_end(self, summary: dict) -> None:
        if "stopped" in summary:
            return
        self.print(
            f"final test_accuracy {summary['test_accuracy']:.4f} (test_loss {summary['test_loss']:.4f}) "
            f"on {summary['test_examples']} test images after {summary['step']} steps, "
            f"{summary['train_seconds']:.1f} s of training"
        )


class EpochLines(Hook):
    """One line per epoch for a long command that trains (``bench tta``): ``prefix``, the epoch, its test accuracy
    when evaluated, and the seconds since ``started`` by ``clock``."""

    def __init__(
        self, prefix: str, num_epochs: int, print_fn: Callable[[str], Any], clock: Callable[[], float], started: float
    ):
        self.prefix, self.num_epochs, self.print = prefix, num_epochs, print_fn
        self.clock, self.started = clock, started

    def on_epoch_end(self, epoch: int, row: MetricRow) -> None:
        test = f"  test_accuracy {row.test_accuracy:.4f}" if row.test_accuracy is not None else ""
        elapsed = self.clock() - self.started
        self.print(f"{self.prefix}: epoch {epoch + 1}/{self.num_epochs}{test}  {elapsed:.1f} s")


def _si(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"
