"""The records' schemas: metric rows (kind, fields left out) and checkpoint metadata (round trip, older data)."""

import math

from harness.records import CheckpointMeta, MetricRow, infer_kind, row_from_dict, rows_of

META = {
    "step": 12,
    "history": [{"step": 4, "epoch": 0.5, "train_loss": 1.0, "examples_per_sec": 5.0}],
    "epoch_sums": {"loss": 2.0, "count": 8},
    "window_sums": {},
    "train_seconds": 1.5,
    "epoch": 1,
    "step_in_epoch": 4,
    "steps_per_epoch": 8,
    "num_train": 64,
    "config": {"seed": 0},
    "fingerprint": {"platform": "cpu", "device_count": 1},
}


def test_a_row_writes_its_kind_and_leaves_out_what_it_does_not_have():
    row = MetricRow(kind="train", step=3, epoch=0.375, train_loss=0.5, examples_per_sec=math.nan, train_accuracy=0.9)
    written = row.to_dict()
    assert written.keys() == {"kind", "step", "epoch", "train_loss", "examples_per_sec", "train_accuracy"}
    assert row.scalars().keys() == {"train_loss", "examples_per_sec", "train_accuracy"}


def test_rows_without_a_kind_get_it_from_the_test_accuracy():
    old_eval = {"step": 8, "epoch": 1, "train_loss": 0.5, "test_accuracy": 0.9}
    assert infer_kind(old_eval) == "eval" and row_from_dict(old_eval) == {"kind": "eval", **old_eval}
    assert row_from_dict({"step": 4})["kind"] == "train"
    assert row_from_dict({"kind": "train", "test_accuracy": 0.1})["kind"] == "train"  # a written kind is kept
    assert rows_of([{"step": 4}, old_eval], "eval") == [old_eval]


def test_checkpoint_meta_round_trips_and_reads_older_metadata():
    meta = CheckpointMeta.from_dict({**META, "leaves": [[2, "float32"]], "unknown": 1})
    assert meta.plan is None and meta.test_accuracy is None  # older than the plan; not evaluated
    assert meta.history == [{"kind": "train", **META["history"][0]}]
    written = meta.to_dict()
    assert "plan" not in written and "test_accuracy" not in written and "unknown" not in written
    assert CheckpointMeta.from_dict(written) == meta
