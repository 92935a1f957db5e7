"""Real Fashion-MNIST from Debian's dataset-fashion-mnist package (installed by .ci/run)."""

import pytest

from harness import config as config_lib
from harness import train
from harness.data import datasets

DEBIAN = datasets.DEBIAN_DIRS["fashion_mnist"]

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(
        bool(datasets.idx.missing_files(DEBIAN)) if DEBIAN.is_dir() else True,
        reason=f"Debian's dataset-fashion-mnist files are not in {DEBIAN} (apt-get install dataset-fashion-mnist)",
    ),
]


@pytest.fixture(scope="module")
def real_data_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds_real"))
    _, source = datasets.ensure_prepared("fashion_mnist", data_dir)
    assert "dataset-fashion-mnist" in source
    return data_dir


def test_debian_files_prepare_into_the_full_splits(real_data_dir):
    b = datasets.builder("fashion_mnist", real_data_dir)
    assert {k: v.num_examples for k, v in b.info.splits.items()} == {"train": 60000, "test": 10000}


def test_one_epoch_of_mlp_reaches_084_on_the_full_test_split(real_data_dir, tmp_path):
    c = config_lib.load("fashion_mnist_mlp", [f"data_dir={real_data_dir}", "num_epochs=1", "warmup_fraction=0"])
    summary = train.train_and_evaluate(c, tmp_path, print_fn=lambda _: None)
    assert summary["test_examples"] == 10000
    assert summary["test_accuracy"] >= 0.84, summary
