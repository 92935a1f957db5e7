"""Colab detection and the default workdir on a mounted Google Drive (paths and environment faked)."""

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from harness import cli, colab


@pytest.mark.parametrize(
    ("environ", "modules", "expected"),
    [
        ({}, {}, False),
        ({"COLAB_RELEASE_TAG": "release-colab_20260101-060000_RC00"}, {}, True),
        ({"COLAB_TPU_ADDR": "10.0.0.2:8470"}, {}, True),
        ({"COLAB_RELEASE_TAG": ""}, {}, False),
        ({}, {"google.colab": object()}, True),
    ],
)
def test_in_colab(environ, modules, expected):
    assert colab.in_colab(environ, modules) is expected


def test_other_google_packages_are_not_colab(monkeypatch):
    import google.protobuf  # noqa: F401  (tfds' dependency: makes `google` a namespace package here)

    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    if importlib.util.find_spec("google.colab") is not None:
        pytest.skip("google.colab is installed here")
    assert colab.in_colab(environ={}) is False


def test_in_colab_sees_an_importable_google_colab(monkeypatch, tmp_path):
    package = tmp_path / "google" / "colab"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "google" or m.startswith("google.")]:
        monkeypatch.delitem(sys.modules, name)
    assert colab.in_colab(environ={}) is True


def test_drive_root_needs_colab_and_a_mounted_mydrive(tmp_path):
    assert colab.drive_root(tmp_path, colab=True) is None  # not mounted
    (tmp_path / "MyDrive").mkdir()
    assert colab.drive_root(tmp_path, colab=True) == tmp_path / "MyDrive"
    assert colab.drive_root(tmp_path, colab=False) is None


def test_default_workdir(tmp_path):
    assert colab.default_workdir("fashion_mnist_cnn", tmp_path, colab=False) == Path("runs/fashion_mnist_cnn")
    assert colab.default_workdir("smoke", tmp_path, colab=True) == Path("runs/smoke")  # Drive not mounted
    (tmp_path / "MyDrive").mkdir()
    assert colab.default_workdir("smoke", tmp_path, colab=True) == tmp_path / "MyDrive/harness/runs/smoke"


@pytest.fixture
def fake_train(monkeypatch):
    """``harness train`` with train_and_evaluate replaced: records the workdir it was given."""
    import harness.train

    calls = []
    monkeypatch.setattr(harness.train, "train_and_evaluate", lambda config, workdir: calls.append(Path(workdir)))
    return calls


def test_cli_default_workdir_outside_colab(fake_train, monkeypatch, capsys):
    monkeypatch.setattr(colab, "in_colab", lambda *a, **k: False)
    assert cli.main(["train", "--config", "configs/smoke.py"]) == 0
    assert fake_train == [Path("runs/smoke")]
    assert "Google Drive" not in capsys.readouterr().out


def test_cli_default_workdir_on_drive_in_colab(fake_train, monkeypatch, capsys, tmp_path):
    (tmp_path / "MyDrive").mkdir()
    monkeypatch.setattr(colab, "DRIVE_MOUNT", tmp_path)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert cli.main(["train", "--config", "smoke"]) == 0
    workdir = tmp_path / "MyDrive/harness/runs/smoke"
    assert fake_train == [workdir]
    assert capsys.readouterr().out.splitlines() == [
        f"workdir on Google Drive: {workdir} (checkpoints outlive the Colab runtime)"
    ]
    fake_train.clear()
    assert cli.main(["train", "--config", "smoke", "--workdir", str(tmp_path / "mine")]) == 0
    assert fake_train == [tmp_path / "mine"]
    assert "Google Drive" not in capsys.readouterr().out
