"""Cadences and the running sums of the loop's actions (the actions at work: tests/test_loop.py)."""

from harness.actions import Cadence, Progress, Sums
from harness.records import CheckpointMeta


def test_cadences_by_steps_epochs_and_the_end():
    assert [s for s in range(1, 13) if Cadence(every_steps=4).at_step(s)] == [4, 8, 12]
    assert not any(Cadence().at_step(s) for s in range(1, 13))  # 0: never
    every_two = Cadence(every_epochs=2, at_end=True)
    assert [e for e in range(1, 6) if every_two.at_epoch(e, last=e == 5)] == [2, 4, 5]
    assert [e for e in range(1, 6) if Cadence(every_epochs=2).at_epoch(e, last=e == 5)] == [2, 4]


def test_sums_are_added_to_both_and_taken_apart():
    sums = Sums({"loss": 1.0, "count": 2}, {"count": 2})
    sums.add({"loss": 3.0, "count": 4})
    assert sums.take_window() == {"loss": 3.0, "count": 6} and sums.window == {}
    sums.add({"loss": 1.0, "count": 1})
    assert sums.take_epoch() == {"loss": 5.0, "count": 7} and sums.epoch == {} and sums.window["count"] == 1


def test_progress_continues_from_checkpoint_meta():
    meta = CheckpointMeta(12, [], {"count": 8}, {"count": 4}, 1.5, 1, 4, 8, 64, {}, {})
    p = Progress.from_meta(meta)
    assert (p.step, p.train_seconds, p.sums.epoch["count"], p.sums.window["count"]) == (12, 1.5, 8, 4)
