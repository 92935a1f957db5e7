"""Checkpoints: digests, corruption fallback, retention, foreign folders, shapes, disk full."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from harness import checkpoint, digests
from harness.checkpoint import Checkpoints, describe_position
from harness.digests import write_atomic
from harness.errors import ForeignCheckpointError, TrainingError, WorkdirError
from harness.retention import BAD_PREFIX, TRASH_PREFIX


def _state(value=0.0, n=4):
    return {"w": np.full((n, 3), value, np.float32), "count": np.array(7, np.int32)}


def _meta(step, acc=None):
    return {"epoch": step, "step_in_epoch": 0, "test_accuracy": acc, "fingerprint": {}}


def _saved(tmp_path, accuracies=(0.1, 0.2, 0.3), keep=10, keep_best=0):
    ckpt = Checkpoints(tmp_path, keep=keep, keep_best=keep_best, warn=lambda _: None)
    for i, acc in enumerate(accuracies, start=1):
        assert ckpt.save(i, _state(i), _meta(i, acc))
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


def test_existing_good_step_is_not_saved_again(tmp_path):
    ckpt = _saved(tmp_path)
    assert ckpt.save(3, _state(9), {}) is False
    ckpt.close()
    assert Checkpoints(tmp_path).restore(_state(), 3)[0]["w"][0, 0] == 3.0


@pytest.mark.parametrize(
    "damage",
    [lambda tmp_path: _flip(_largest_file(tmp_path / "checkpoints" / "3")), lambda tmp_path: _undigest(tmp_path, 3)],
    ids=["corrupted", "no-digest"],
)
def test_a_step_that_is_not_good_is_replaced_by_a_fresh_save(tmp_path, damage):
    """A kill between Orbax's commit and the digest, or a corrupted file: the next save of that step replaces it
    (before, save() returned False and the step stayed unrestorable forever)."""
    ckpt = _saved(tmp_path)
    ckpt.close()
    damage(tmp_path)
    ckpt = Checkpoints(tmp_path, warn=warnings.append)
    assert ckpt.restore_latest(_state())[0] == 2
    assert ckpt.save(3, _state(33), _meta(3)) is True
    ckpt.close()
    assert any("step 3 is not restorable" in w and "deleted it, saving it afresh" in w for w in warnings), warnings
    ckpt = Checkpoints(tmp_path, warn=warnings.append)
    assert ckpt.verify(3) is None and ckpt.restore_latest(_state())[1]["w"][0, 0] == 33.0
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith((".", "3."))]


def _undigest(tmp_path, step):
    (tmp_path / "checkpoint_digests" / f"{step}.json").unlink()  # as if killed between commit and digest


def test_a_foreign_folder_at_the_save_position_is_moved_aside_not_deleted(tmp_path):
    foreign = tmp_path / "checkpoints" / "2"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    ckpt = Checkpoints(tmp_path, warn=warnings.append)
    assert ckpt.save(1, _state(1), _meta(1)) and ckpt.save(2, _state(2), _meta(2))
    ckpt.close()
    (aside,) = (tmp_path / "checkpoints").glob(f"{BAD_PREFIX}2-*")
    assert (aside / "notes.txt").read_text() == "mine"
    assert any(f"moved it to {aside}" in w for w in warnings), warnings
    assert Checkpoints(tmp_path).restore_latest(_state())[0] == 2


def test_retention_counts_only_good_steps(tmp_path):
    """Corrupt 2, save 3 with keep=2: 1 and 3 stay (before, corrupt 2 took a slot and good 1 was deleted);
    corrupting 3 next still leaves a restorable step."""
    ckpt = _saved(tmp_path, accuracies=(0.1, 0.2), keep=2)
    ckpt.close()
    _flip(_largest_file(tmp_path / "checkpoints" / "2"))
    ckpt = Checkpoints(tmp_path, keep=2, keep_best=0, warn=warnings.append)
    assert ckpt.save(3, _state(3), _meta(3))
    ckpt.close()
    assert any("step 2 is not restorable" in w and "deleted it" in w for w in warnings), warnings
    ckpt = Checkpoints(tmp_path, keep=2, keep_best=0, warn=warnings.append)
    assert ckpt.good_steps() == [1, 3] and ckpt.verify(1) is None and ckpt.verify(3) is None
    _flip(_largest_file(tmp_path / "checkpoints" / "3"))
    assert ckpt.restore_latest(_state())[0] == 1


def test_retention_verifies_only_the_steps_it_keeps_once_per_process(tmp_path, monkeypatch):
    _saved(tmp_path, accuracies=(0.1, 0.2, 0.9, 0.4, 0.5), keep=10).close()
    reads = []
    original = digests.file_digests
    monkeypatch.setattr(digests, "file_digests", lambda d: reads.append(int(d.name)) or original(d))
    ckpt = Checkpoints(tmp_path, keep=2, keep_best=1, warn=warnings.append)
    assert ckpt.save(6, _state(6), _meta(6, 0.3))
    ckpt.finalize()
    assert sorted(reads) == [3, 5, 6]  # 6 to digest it; 5 (newest but one) and 3 (best) verified; 1, 2, 4 never read
    assert ckpt.good_steps() == [3, 5, 6]
    reads.clear()
    assert ckpt.save(7, _state(7), _meta(7, 0.3))
    ckpt.close()
    assert reads == [7] and ckpt.good_steps() == [3, 6, 7]


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
    assert any("step 7: not a checkpoint harness wrote" in w for w in warnings)  # not "no digest": never saved
    assert "no digest" not in ckpt.verify(7) and ckpt.verify(7) == checkpoint.FOREIGN
    ckpt.close()


def test_a_save_killed_before_its_digest_is_removed_once_the_run_has_passed_it(tmp_path):
    """Issue 22 item 13: a stop's save off the save grid (step 2 here), killed between Orbax's commit and the
    digest, is never saved again on the same number: retention removes it once a newer step is recorded. One
    above the newest good step is kept: the run replaces it when it gets there."""
    _saved(tmp_path, accuracies=(0.1, 0.2, 0.3, 0.4, 0.5)).close()
    (tmp_path / "checkpoint_digests" / "4.json").unlink()
    for step in (2, 5):
        (tmp_path / "checkpoint_digests" / f"{step}.json").unlink()  # killed between commit and digest
    shutil.rmtree(tmp_path / "checkpoints" / "4")
    ckpt = Checkpoints(tmp_path, keep=10, keep_best=0, warn=warnings.append)
    assert [r["step"] for r in ckpt.listing() if r["problem"]] == [5, 2]
    assert ckpt.save(4, _state(4), _meta(4))
    ckpt.finalize()
    assert not (tmp_path / "checkpoints" / "2").exists() and (tmp_path / "checkpoints" / "5").is_dir()
    assert any("step 2 is not restorable (no digest" in w and "deleted it" in w for w in warnings), warnings
    assert [r["step"] for r in ckpt.listing() if r["problem"]] == [5]
    ckpt.close()


def test_a_damaged_step_of_harnesss_is_deleted_not_called_foreign(tmp_path):
    """Issue 22 item 15: a step whose _CHECKPOINT_METADATA was deleted is still harness's (its digest lists its
    files): replaced by a fresh save, deleted, nothing left behind; never "not a folder harness wrote"."""
    ckpt = _saved(tmp_path)
    (tmp_path / "checkpoints" / "3" / "_CHECKPOINT_METADATA").unlink()
    assert ckpt.save(3, _state(9), _meta(3))
    ckpt.close()
    assert [w for w in warnings if "step 3" in w] == [
        "warning: checkpoint step 3 is not restorable (file _CHECKPOINT_METADATA is missing): deleted it, "
        "saving it afresh"
    ]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(BAD_PREFIX)]
    assert Checkpoints(tmp_path, create=False).verify(3) is None


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
    with pytest.raises(ForeignCheckpointError, match=r"float32\[4, 3\] where this model needs float32\[5, 3\]"):
        ckpt.restore_latest(_state(n=5))
    wider = {**_state(), "w": _state()["w"].astype(np.float64)}
    with pytest.raises(ForeignCheckpointError, match="belongs to another model"):
        ckpt.restore_latest(wider)
    with pytest.raises(ForeignCheckpointError, match="another structure"):
        ckpt.restore_latest({"w": _state()["w"]})
    assert issubclass(ForeignCheckpointError, WorkdirError)  # the CLI still makes it one line, exit 2


def test_relative_workdir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = Checkpoints("rel", warn=warnings.append)
    assert ckpt.save(1, _state(1), {})
    ckpt.close()
    assert (tmp_path / "rel" / "checkpoints" / "1").is_dir()


def test_disk_full_is_one_line_and_keeps_existing_checkpoints(tmp_path):
    """A real write failure inside Orbax's async writer (tensorstore, C++): the file size limit makes its writes fail
    with EFBIG as a full disk fails them with ENOSPC. Orbax logs ~250 lines of tracebacks for it (absl logging); the
    process must print one line, naming the log file that got them."""
    _saved(tmp_path).close()
    script = textwrap.dedent(
        f"""
        import resource, signal, numpy as np
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        from harness.checkpoint import Checkpoints
        from harness.errors import WorkdirError
        ckpt = Checkpoints({str(tmp_path)!r}, keep=10)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # files above 200 kB fail, the log fits
        try:
            ckpt.save(4, {{"w": np.random.rand(500, 1000).astype(np.float32), "count": np.array(1, np.int32)}}, {{}})
            ckpt.close()
        except WorkdirError as e:
            print("ERROR:", e)
        """
    )
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    out = (p.stdout + p.stderr).strip().splitlines()
    log = tmp_path / "harness-errors.log"
    assert out == [
        f"ERROR: cannot write checkpoint step 4 in {tmp_path}/checkpoints: File too large (Orbax's details in {log})"
    ], p.stdout + p.stderr
    assert "Traceback" in log.read_text() and "os_error_code='27'" in log.read_text()
    assert not list((tmp_path / "checkpoints").glob("*tmp*"))  # the failed save's temporary folder is removed
    ckpt = Checkpoints(tmp_path, warn=warnings.append)
    assert ckpt.good_steps() == [1, 2, 3] and all(ckpt.verify(s) is None for s in (1, 2, 3))
    assert json.loads((tmp_path / "checkpoint_digests" / "3.json").read_text())["step"] == 3


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (mounting one needs root: skipped where it cannot be mounted)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {(p.stderr.strip() or 'mount failed')[:200]}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_is_one_line_without_tracebacks_or_temporary_folders(small_disk):
    """Issue 22 item 14: on a real full disk Orbax's writers fail part-way, printing "RuntimeError: Event loop is
    closed" tracebacks from their threads and leaving STEP.orbax-checkpoint-tmp; a save that cannot fit is
    refused before it starts."""
    script = textwrap.dedent(
        f"""
        import numpy as np
        from harness.checkpoint import Checkpoints
        from harness.errors import WorkdirError
        ckpt = Checkpoints({str(small_disk)!r}, keep=10)
        try:
            for step in (1, 2, 3):  # 1.2 MB each: the third does not fit in 3 MiB
                ckpt.save(step, {{"w": np.random.rand(300, 1000).astype(np.float32)}}, {{}})
                ckpt.finalize()
        except WorkdirError as e:
            print("ERROR:", e)
        ckpt.close()
        """
    )
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    out = (p.stdout + p.stderr).strip().splitlines()
    assert len(out) == 1 and out[0].startswith(
        f"ERROR: cannot write checkpoint step 3 in {small_disk}/checkpoints: No space left on device"
    ), p.stdout + p.stderr
    assert not list((small_disk / "checkpoints").glob("*tmp*"))
    ckpt = Checkpoints(small_disk, create=False)
    assert ckpt.good_steps() == [1, 2] and all(ckpt.verify(s) is None for s in (1, 2))
    ckpt.close()


def test_orbax_error_codes_read_as_the_os_words():
    assert checkpoint._os_reason(ValueError("Failed to write 3 bytes [os_error_code='28']")) == os.strerror(28)
    assert checkpoint._os_reason(OSError(13, "Permission denied")) == "Permission denied"


def test_write_atomic_failure_is_a_workdir_error_naming_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(WorkdirError, match=f"cannot write {blocker}/config.json"):  # a file where a dir should be
        write_atomic(blocker / "config.json", "{}")


@pytest.mark.parametrize(
    ("position", "text"),
    [
        ((10, 0, 469, 10), "end of epoch 10 of 10"),
        ((2, 0, 235, 1), "end of epoch 2"),  # beyond a shortened run: no "of 1"
        ((2, 462, 469, 10), "epoch 3 of 10, step 462 of 469"),
        ((2, 5, 0, 0), "epoch 3, step 5"),
        ((3, 5, 8, 2), "epoch 4, step 5 of 8"),  # mid-epoch beyond a shortened run
    ],
)
def test_describe_position(position, text):
    assert describe_position(*position) == text
