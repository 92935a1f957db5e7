"""`harness report`: learning curves, confusion matrix, worst mistakes, the HTML page and TensorBoard images."""

import json

import numpy as np
import pytest
from helpers import needs_chromium, read_events, render, write_tiny_idx
from test_explore import assert_picture

from harness import cli, report, train
from harness.data import datasets
from harness.errors import WorkdirError


@pytest.fixture(scope="module")
def trained(tiny_data_dir, tmp_path_factory):
    from harness import config as config_lib

    c = config_lib.base_config()
    c.update(
        dataset="fashion_mnist",
        data_dir=tiny_data_dir,
        model="mlp_tiny",
        num_epochs=3,
        batch_size=64,
        learning_rate=3e-3,
        log_every_steps=2,
        report=True,
    )
    workdir = tmp_path_factory.mktemp("reported")
    lines = []
    train.train_and_evaluate(c, workdir, print_fn=lines.append)
    assert any(line.startswith("report: ") for line in lines)  # written at the end of training
    return workdir


def test_report_pictures(trained):
    sizes = {"learning_curves.png": (1100, 400), "confusion_matrix.png": (1200, 650), "worst_mistakes.png": None}
    for name, size in sizes.items():
        assert_picture(trained / "report" / name, size)
    page = (trained / "report" / "index.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 3
    assert "config.model" in page and "median examples/s" in page


def test_confusion_counts():
    counts = report.confusion(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    np.testing.assert_array_equal(counts, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])


def test_report_command_to_another_folder(trained, tmp_path, capsys):
    assert cli.main(["report", str(trained), "--out", str(tmp_path)]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "confusion_matrix.png").is_file()


def test_report_on_a_workdir_without_training_is_one_line(tmp_path):
    with pytest.raises(WorkdirError, match=r"no metrics\.jsonl"):
        report.write_report(tmp_path)


def _event_tags(logdir):
    return {v.tag for e in read_events(logdir) for v in e.summary.value if v.HasField("image")}


def test_same_figures_as_tensorboard_images(trained):
    tags = _event_tags(trained / "tensorboard")
    assert {"report/learning_curves", "report/confusion_matrix", "report/worst_mistakes"} <= tags


@needs_chromium
def test_report_page_loads_every_image_in_chromium(trained):
    widths, text = render(trained / "report" / "index.html")
    assert len(widths) == 3 and all(w > 0 for w in widths), widths
    assert all(name in text for name in datasets.class_names("fashion_mnist"))
    assert "Confusion matrix" in text and json.loads((trained / "config.json").read_text())["model"] in text


def test_report_on_tfds_mock_data(tiny_config, tmp_path, monkeypatch, mock_tfds):
    monkeypatch.setattr(datasets, "ensure_prepared", lambda name, data_dir: (datasets.builder(name), "mock"))
    tiny_config.update(num_epochs=1, dataset="mnist", report=True)
    with mock_tfds(num_examples=192):
        train.train_and_evaluate(tiny_config, tmp_path, print_fn=lambda _: None)
    for name in ("learning_curves.png", "confusion_matrix.png", "worst_mistakes.png"):
        assert_picture(tmp_path / "report" / name)
    assert "Per-class accuracy" in (tmp_path / "report" / "index.html").read_text()


def _copy_run(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("report", "tensorboard"))
    return run


def test_a_garbage_metrics_line_is_skipped_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1, "epoch": 0.5}\n{"step": 2, "epo\n\n[1, 2]\n\xff\n{"step": 3, "epoch": 1.0}\n')
    warnings = []
    assert [r["step"] for r in report.read_metrics(tmp_path, warn=warnings.append)] == [1, 3]
    assert warnings == [f"warning: {path}, line {n}: not a JSON object, skipped" for n in (2, 4, 5)]


def test_rows_of_runs_before_kinds_get_their_kind_when_read(tmp_path):
    rows = [
        {"step": 2, "epoch": 0.5, "train_loss": 1.0, "train_accuracy": 0.5, "examples_per_sec": 9.0},
        {"step": 4, "epoch": 1, "train_loss": 0.9, "examples_per_sec": 8.0, "epoch_seconds": 1.0},
        {"step": 8, "epoch": 2, "train_loss": 0.8, "examples_per_sec": 8.0, "epoch_seconds": 1.0, "test_accuracy": 0.7},
        {"kind": "train", "step": 10, "epoch": 2.5, "train_loss": 0.7, "examples_per_sec": 9.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["kind"] for r in report.read_metrics(tmp_path)] == ["train", "train", "eval", "train"]


def test_report_command_skips_a_garbage_metrics_line(trained, tmp_path, capsys):
    run = _copy_run(trained, tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "test_acc\n')
    lines = (run / "metrics.jsonl").read_text().count("\n")
    assert cli.main(["report", str(run)]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"warning: {run / 'metrics.jsonl'}, line {lines}: not a JSON object, skipped"]
    assert (run / "report" / "index.html").is_file()


def test_report_reads_the_runs_data_dir_and_never_prepares_another(trained, tmp_path, monkeypatch, capsys):
    from tensorflow_datasets.core import constants

    default, idx_dir = tmp_path / "tfds-default", tmp_path / "idx"  # the default data dir today: empty
    default.mkdir()
    write_tiny_idx(idx_dir, num_train=20, num_test=10)
    monkeypatch.setattr(constants, "DATA_DIR", str(default))
    monkeypatch.setattr(datasets, "DEBIAN_DIRS", {"fashion_mnist": idx_dir})  # something it could prepare from
    assert cli.main(["report", str(trained), "--out", str(tmp_path / "out")]) == 0  # config.data_dir is set
    capsys.readouterr()
    run = _copy_run(trained, tmp_path)  # a run on the default data dir of its day
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data_dir": ""}))
    assert cli.main(["report", str(run)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert f"harness: error: {run} trained on tfds' default data dir (config.data_dir is empty)" in line
    assert "set TFDS_DATA_DIR to the data dir it trained with" in line
    assert list(default.iterdir()) == [] and not (run / "report").exists()
