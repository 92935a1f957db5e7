"""`harness report`: learning curves, confusion matrix, worst mistakes, the HTML page and TensorBoard images."""

import json

import numpy as np
import pytest
from browser import needs_chromium, render
from events import read_events
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
