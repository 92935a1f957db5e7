import pytest

from harness import workdir
from harness.errors import WorkdirError


def test_new_and_empty_dirs_are_claimed_with_a_marker(tmp_path):
    assert (workdir.claim(tmp_path / "new" / "run") / workdir.MARKER).is_file()
    (tmp_path / "empty").mkdir()
    assert (workdir.claim(tmp_path / "empty") / workdir.MARKER).is_file()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    workdir.claim(tmp_path / "empty")  # ours: fine again


def test_foreign_non_empty_dir_is_refused_untouched(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    (tmp_path / "7").mkdir()
    with pytest.raises(WorkdirError, match="not a harness workdir") as e:
        workdir.claim(tmp_path)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["7", "thesis.tex"]


def test_a_file_is_not_a_workdir(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(WorkdirError, match="not a directory"):
        workdir.claim(tmp_path / "f")
