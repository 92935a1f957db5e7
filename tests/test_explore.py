"""`harness explore`: every picture on mock data and on imported IDX data, non-blank, the expected pixel size."""

import numpy as np
import pytest
from helpers import needs_chromium, render

from harness import cli, explore, pictures
from harness.data import datasets
from harness.errors import HarnessError

EXPECTED_SIZES = {  # (width, height) in pixels = figure inches × 100 dpi
    "samples.png": (1060, 960),
    "pixel_matrix.png": (1100, 1100),
    "flattened_vector.png": (1200, 420),
    "class_means.png": (1200, 520),
}


def assert_picture(path, size=None):
    pixels = pictures.figure_to_array(path)
    if size:
        assert (pixels.shape[1], pixels.shape[0]) == size, path.name
    gray = pixels[:, :, :3].mean(axis=2)
    assert gray.std() > 0.02 and (gray < 0.5).mean() > 0.001, f"{path.name} looks blank"


def _check_out(out, names):
    for name in ["samples.png", "pixel_matrix.png", "flattened_vector.png", "one_class.png", "class_means.png"]:
        assert_picture(out / name, EXPECTED_SIZES.get(name))
    page = (out / "index.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 5
    assert all(n in page for n in names) and "px783" in page and "<th>label</th>" in page


def test_explore_on_imported_idx_data(tiny_data_dir, tmp_path, capsys):
    rc = cli.main(
        ["explore", "--dataset", "fashion_mnist", "--data-dir", tiny_data_dir, "--out", str(tmp_path), "--class", "3"]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "fashion_mnist train: 512 examples" in out and "dtype uint8" in out and "Ankle boot" in out
    _check_out(tmp_path, datasets.class_names("fashion_mnist"))
    assert_picture(tmp_path / "one_class.png")


def test_explore_on_tfds_mock_data(mock_tfds, tmp_path):
    with mock_tfds(num_examples=300):
        split = datasets.load_split(datasets.builder("mnist"), "test")
    explore.explore(split, datasets.class_names("mnist"), "mnist", "test", tmp_path)
    _check_out(tmp_path, [str(d) for d in range(10)])


def test_summary_counts_every_class():
    labels = np.array([0, 0, 2], np.int32)
    split = datasets.Split(np.zeros((3, 28, 28, 1), np.uint8), labels)
    text = explore.summary(split, ["a", "b", "c"], "x", "train")
    assert "a 2, b 0, c 1" in text and "values 0..0" in text


def test_bad_class_is_refused(tmp_path):
    split = datasets.Split(np.zeros((3, 28, 28, 1), np.uint8), np.zeros(3, np.int32))
    with pytest.raises(HarnessError, match=r"--class 10: allowed 0\.\.9"):
        explore.explore(split, [str(i) for i in range(10)], "mnist", "train", tmp_path, klass=10)


@needs_chromium
def test_page_loads_every_image_in_chromium(tiny_data_dir, tmp_path):
    cli.main(["explore", "--dataset", "fashion_mnist", "--data-dir", tiny_data_dir, "--out", str(tmp_path)])
    widths, text = render(tmp_path / "index.html")
    assert len(widths) == 5 and all(w > 0 for w in widths), widths
    assert all(name in text for name in datasets.class_names("fashion_mnist"))
