"""The digest store on its own: records, verification (cached per process), the list of recorded steps."""

import json

import pytest

from harness import digests
from harness.digests import Digests, write_atomic
from harness.errors import WorkdirError


@pytest.fixture
def store(tmp_path):
    steps_dir, digest_dir = tmp_path / "checkpoints", tmp_path / "checkpoint_digests"
    for step in (1, 2):
        (steps_dir / str(step) / "state").mkdir(parents=True)
        (steps_dir / str(step) / "state" / "data").write_bytes(bytes([step]) * 100)
    digest_dir.mkdir()
    return Digests(steps_dir, digest_dir)


def test_a_written_record_verifies_and_lists(store):
    assert store.steps() == [] and store.verify(1) == "no digest (the save never completed)"
    store.write(1, {"test_accuracy": 0.5})
    record = store.record(1)
    assert record["files"] == {"state/data": digests.file_digests(store.steps_dir / "1")["state/data"]}
    assert record["test_accuracy"] == 0.5 and record["step"] == 1 and "saved_at" in record
    assert store.steps() == [1] and store.verify(1) is None


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda d: (d / "state" / "data").write_bytes(b"x"), "file state/data does not match its digest (corrupted)"),
        (lambda d: (d / "state" / "data").unlink(), "file state/data is missing"),
        (lambda d: (d / "state" / "extra").write_text("?"), "unexpected file state/extra"),
    ],
)
def test_damage_is_named(store, damage, problem):
    store.write(2, {})
    damage(store.steps_dir / "2")
    assert store.verify(2) == problem


def test_each_step_is_read_once_per_process_and_a_written_one_not_at_all(store, monkeypatch):
    reads = []
    original = digests.file_digests
    store.write(1, {})
    (store.digest_dir / "2.json").write_text(json.dumps({"files": original(store.steps_dir / "2")}))
    monkeypatch.setattr(digests, "file_digests", lambda d: reads.append(int(d.name)) or original(d))
    assert [store.problem(s) for s in (1, 2, 2)] == [None, None, None]
    assert reads == [2]  # 1 was written by this process, 2 verified once
    store.forget(2)
    assert store.known_problem(2) is None and store.problem(2) is None and reads == [2, 2]


def test_write_atomic_leaves_no_temporary_file_and_names_an_unwritable_path(tmp_path):
    write_atomic(tmp_path / "a.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    (tmp_path / "file").write_text("")
    with pytest.raises(WorkdirError, match=r"cannot write .*file/b.json"):
        write_atomic(tmp_path / "file" / "b.json", "{}")
