"""The records training writes, one schema each and serialised here: metric rows and checkpoint metadata.

A :class:`MetricRow` is a line of ``WORKDIR/metrics.jsonl`` and an entry of a checkpoint's ``history``: ``kind``
"train" (a logged window of steps, or an epoch's end without evaluation) or "eval" (an epoch's end with the test
split's loss and accuracy). Rows written before ``kind`` existed get it once, when read (:func:`row_from_dict`).
A :class:`CheckpointMeta` is the JSON saved beside a checkpoint's state.
"""

from __future__ import annotations

import dataclasses
from typing import Any

KINDS = ("train", "eval")
TIMING_KEYS = ("examples_per_sec", "epoch_seconds")  # the only row fields that differ between identical runs


@dataclasses.dataclass(frozen=True)
class MetricRow:
    """One metric row; fields left None are not written."""

    kind: str
    step: int
    epoch: float
    train_loss: float
    examples_per_sec: float
    train_accuracy: float | None = None
    epoch_seconds: float | None = None
    test_loss: float | None = None
    test_accuracy: float | None = None

    def to_dict(self) -> dict:
        """The row as written to metrics.jsonl and saved in checkpoints."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def scalars(self) -> dict[str, float]:
        """The measured numbers (not step, epoch or kind)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("kind", "step", "epoch")}


def infer_kind(row: dict) -> str:
    """The kind of a row written before rows had one: evaluated rows carry the test accuracy."""
    return "eval" if "test_accuracy" in row else "train"


def row_from_dict(row: dict) -> dict:
    """A stored row as today's rows are, ``kind`` inferred when it has none (rows of older runs)."""
    return row if "kind" in row else {"kind": infer_kind(row), **row}


def rows_of(history: list[dict], kind: str) -> list[dict]:
    """The rows of ``kind`` ("train" or "eval")."""
    return [r for r in history if row_from_dict(r)["kind"] == kind]


@dataclasses.dataclass
class CheckpointMeta:
    """What a checkpoint saves beside the state: enough to continue exactly from its step, and to describe it."""

    step: int
    history: list
    epoch_sums: dict
    window_sums: dict
    train_seconds: float
    epoch: int
    step_in_epoch: int
    steps_per_epoch: int
    num_train: int
    config: dict
    fingerprint: dict
    plan: dict | None = None  # absent in checkpoints older than the plan
    test_accuracy: float | None = None  # only at an evaluated epoch's end
    leaves: list | None = None  # written by Checkpoints.save

    def to_dict(self) -> dict:
        """The JSON saved (None fields left out, as they always were)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, meta: dict[str, Any]) -> CheckpointMeta:
        """The metadata of a saved checkpoint (unknown keys ignored; rows without ``kind`` get one)."""
        names = {f.name for f in dataclasses.fields(cls)}
        found = cls(**{k: v for k, v in meta.items() if k in names})
        found.history = [row_from_dict(r) for r in found.history]
        return found
