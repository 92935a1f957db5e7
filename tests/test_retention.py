"""Retention: steps_to_keep (pure), which folders are harness's, removing a step (deleted or moved aside)."""

import json

import numpy as np
import pytest

from harness.checkpoint import Checkpoints
from harness.retention import BAD_PREFIX, is_harness_step, remove_step, steps_to_keep


def _records(accuracies: dict) -> dict:
    return {step: {"test_accuracy": acc} for step, acc in accuracies.items()}


@pytest.mark.parametrize(
    ("accuracies", "keep", "keep_best", "kept"),
    [
        ({1: 0.9, 2: 0.5, 3: 0.6, 4: 0.7, 5: 0.8}, 2, 1, {1, 4, 5}),
        ({1: 0.9, 2: 0.5, 3: 0.6}, 1, 0, {3}),
        ({1: 0.9, 2: 0.5, 3: 0.6}, 10, 1, {1, 2, 3}),
        ({1: 0.7, 2: 0.7, 3: 0.1, 4: 0.2}, 1, 1, {2, 4}),  # a tie goes to the newer step
        ({1: 0.9, 2: None, 3: None}, 1, 2, {1, 3}),  # mid-epoch steps have no accuracy
        ({1: 0.9, 2: 0.5}, 0, 1, {1}),  # only the best
        ({}, 2, 1, set()),
    ],
)
def test_steps_to_keep(accuracies, keep, keep_best, kept):
    assert steps_to_keep(_records(accuracies), keep, keep_best) == kept


def test_steps_to_keep_counts_only_the_good_steps_it_is_given():
    """Step 3 is corrupt, so the caller leaves it out: it takes no slot and 1 stays (it was deleted before)."""
    good = _records({1: 0.5, 2: 0.6, 4: 0.7})
    assert steps_to_keep(good, 2, 0) == {2, 4}
    assert steps_to_keep(_records({1: 0.5, 4: 0.7}), 2, 0) == {1, 4}  # fewer than keep good ones: all stay


@pytest.fixture
def saved(tmp_path):
    """A workdir with a real Orbax step 1 (and its digest); returns (step folder, digest file)."""
    ckpt = Checkpoints(tmp_path, warn=lambda _: None)
    assert ckpt.save(1, {"w": np.ones((2, 3), np.float32)}, {})
    ckpt.close()
    return tmp_path / "checkpoints" / "1", tmp_path / "checkpoint_digests" / "1.json"


def test_a_step_harness_wrote_is_harnesss_and_is_deleted(saved):
    step_dir, digest = saved
    record = json.loads(digest.read_text())
    assert is_harness_step(step_dir, record) and is_harness_step(step_dir, None)
    assert remove_step(step_dir, digest, record) is None
    assert not step_dir.exists() and not digest.exists()
    assert not list(step_dir.parent.iterdir())  # no trash left behind


@pytest.mark.parametrize("where", ["top", "inside"])
def test_a_step_with_a_file_of_yours_is_moved_aside_never_deleted(saved, where):
    step_dir, digest = saved
    record = json.loads(digest.read_text())
    mine = step_dir / ("notes.txt" if where == "top" else "state/notes.txt")
    mine.write_text("mine")
    assert not is_harness_step(step_dir, record)
    aside = remove_step(step_dir, digest, record)
    assert aside.name.startswith(f"{BAD_PREFIX}1-") and aside.parent == step_dir.parent
    assert (aside / mine.relative_to(step_dir)).read_text() == "mine" and not step_dir.exists()
    assert json.loads(aside.with_name(f"{aside.name}.digest.json").read_text()) == record


def test_foreign_folders_are_not_harnesss(tmp_path, saved):
    step_dir, _ = saved
    plain = tmp_path / "7"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine")
    other_items = tmp_path / "8"
    other_items.mkdir()
    (other_items / "_CHECKPOINT_METADATA").write_text(json.dumps({"item_handlers": {"params": "x"}}))
    link = tmp_path / "9"
    link.symlink_to(step_dir)
    garbled = tmp_path / "10"
    garbled.mkdir()
    (garbled / "_CHECKPOINT_METADATA").write_text("{not json")
    for folder in (plain, other_items, link, garbled):
        assert not is_harness_step(folder, None), folder
