"""Checkpoints: digests, corruption fallback, retention, foreign folders, shapes, disk full."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from harness.checkpoint import TRASH_PREFIX, Checkpoints
from harness.errors import TrainingError, WorkdirError


def _state(value=0.0, n=4):
    return {"w": np.full((n, 3), value, np.float32), "count": np.array(7, np.int32)}


def _saved(tmp_path, accuracies=(0.1, 0.2, 0.3), keep=10, keep_best=0):
    ckpt = Checkpoints(tmp_path, keep=keep, keep_best=keep_best, warn=lambda _: None)
    for i, acc in enumerate(accuracies, start=1):
        assert ckpt.save(i, _state(i), {"epoch": i, "step_in_epoch": 0, "test_accuracy": acc, "fingerprint": {}})
    ckpt.close()
    return Checkpoints(tmp_path, keep=keep, keep_best=keep_best, warn=warnings.append)


warnings: list = []


@pytest.fixture(autouse=True)
def _clear_warnings():
    warnings.clear()


def test_round_trip_with_digests(tmp_path):
    ckpt = _saved(tmp_path)
    assert ckpt.good_steps() == [1, 2, 3] and all(r["problem"] is None for r in ckpt.listing())
    step, state, meta = ckpt.restore_latest(_state())
    assert step == 3 and meta["test_accuracy"] == 0.3
    np.testing.assert_array_equal(state["w"], _state(3)["w"])
    assert state["count"].dtype == np.int32
    assert (tmp_path / "checkpoint_digests" / "3.json").is_file()


def _largest_file(step_dir):
    return max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip(path):
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize(
    "damage",
    [
        _flip,
        lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),  # truncated
        lambda p: p.unlink(),  # deleted
    ],
    ids=["bit-flip", "truncated", "deleted"],
)
def test_corrupt_latest_is_detected_and_previous_used(tmp_path, damage):
    ckpt = _saved(tmp_path)
    damage(_largest_file(tmp_path / "checkpoints" / "3"))
    assert ckpt.verify(3) is not None and ckpt.verify(2) is None
    step, state, _ = ckpt.restore_latest(_state())
    assert step == 2 and float(state["w"][0, 0]) == 2.0
    assert len(warnings) == 1 and "skipping checkpoint step 3" in warnings[0]


def test_emptied_metadata_is_detected(tmp_path):
    ckpt = _saved(tmp_path)
    meta_files = [p for p in (tmp_path / "checkpoints" / "3").rglob("*") if p.is_file() and "meta" in str(p)]
    assert meta_files
    for p in meta_files:
        p.write_bytes(b"")
    assert "does not match" in ckpt.verify(3)
    assert ckpt.restore_latest(_state())[0] == 2


def test_save_without_digest_is_never_restored(tmp_path):
    ckpt = _saved(tmp_path)
    (tmp_path / "checkpoint_digests" / "3.json").unlink()  # as if killed between commit and digest
    assert ckpt.restore_latest(_state())[0] == 2
    assert "no digest" in warnings[0]


def test_existing_step_is_not_saved_again(tmp_path):
    ckpt = _saved(tmp_path)
    assert ckpt.save(3, _state(9), {}) is False
    ckpt.close()


def test_non_finite_parameters_are_never_saved(tmp_path):
    ckpt = _saved(tmp_path)
    with pytest.raises(TrainingError, match="last good checkpoint: step 3"):
        ckpt.save(4, _state(np.nan), {})
    ckpt.close()
    assert not (tmp_path / "checkpoints" / "4").exists()


def test_retention_keeps_latest_and_best(tmp_path):
    ckpt = _saved(tmp_path, accuracies=(0.9, 0.5, 0.6, 0.7, 0.8), keep=2, keep_best=1)
    assert ckpt.good_steps() == [1, 4, 5]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "4", "5"]


def test_foreign_number_named_folder_is_never_deleted_nor_restored(tmp_path):
    foreign = tmp_path / "checkpoints" / "7"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    ckpt = _saved(tmp_path, accuracies=(0.1, 0.2, 0.3), keep=1)
    assert (foreign / "notes.txt").read_text() == "mine"
    assert ckpt.restore_latest(_state())[0] == 3  # 7 is newer but is not ours
    assert any("step 7" in w and "no digest" in w for w in warnings)


def test_kill_during_deletion_is_finished_on_next_start(tmp_path):
    ckpt = _saved(tmp_path)
    ckpt.close()
    (tmp_path / "checkpoints" / "1").rename(tmp_path / "checkpoints" / f"{TRASH_PREFIX}1-abc")  # killed here
    again = Checkpoints(tmp_path, warn=warnings.append)
    assert again.good_steps() == [2, 3]
    assert not list((tmp_path / "checkpoints").glob(f"{TRASH_PREFIX}*"))
    assert not (tmp_path / "checkpoint_digests" / "1.json").exists()


def test_other_shape_or_dtype_is_refused_not_silently_restored(tmp_path):
    ckpt = _saved(tmp_path)
    with pytest.raises(WorkdirError, match=r"float32\[4, 3\] where this model needs float32\[5, 3\]"):
        ckpt.restore_latest(_state(n=5))
    wider = {**_state(), "w": _state()["w"].astype(np.float64)}
    with pytest.raises(WorkdirError, match="belongs to another model"):
        ckpt.restore_latest(wider)


def test_relative_workdir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = Checkpoints("rel", warn=warnings.append)
    assert ckpt.save(1, _state(1), {})
    ckpt.close()
    assert (tmp_path / "rel" / "checkpoints" / "1").is_dir()


def test_disk_full_is_one_line_and_keeps_existing_checkpoints(tmp_path):
    _saved(tmp_path).close()
    script = textwrap.dedent(
        f"""
        import resource, signal, numpy as np
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        from harness.checkpoint import Checkpoints
        from harness.errors import WorkdirError
        ckpt = Checkpoints({str(tmp_path)!r}, keep=10)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
        try:
            ckpt.save(4, {{"w": np.random.rand(100, 1000).astype(np.float32), "count": np.array(1, np.int32)}}, {{}})
            ckpt.close()
        except WorkdirError as e:
            print("ERROR:", e)
        """
    )
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    errors = [line for line in p.stdout.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and "cannot write checkpoint step 4" in errors[0], p.stdout + p.stderr
    ckpt = Checkpoints(tmp_path, warn=warnings.append)
    assert ckpt.good_steps() == [1, 2, 3] and all(ckpt.verify(s) is None for s in (1, 2, 3))
    assert json.loads((tmp_path / "checkpoint_digests" / "3.json").read_text())["step"] == 3
