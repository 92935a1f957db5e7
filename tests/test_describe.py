"""harness.data.describe: `harness data import` (shipped or --as NAME) and the lines `harness data info` prints."""

import pytest

from harness.data import catalog, describe
from harness.errors import DataError

LETTERS = "a,b,c,d,e,f,g,h,i,j"


def test_listing_has_the_shipped_datasets_then_the_imported_ones(tiny_idx_dir, tmp_path):
    lines = describe.listing(str(tmp_path))
    assert lines[0] == f"data dir: {tmp_path}" and [line.split()[0] for line in lines[1:4]] == list(catalog.NAMES)
    assert all("shipped   not prepared" in line for line in lines[1:4]) and "classes: o, ki, su" in lines[3]
    describe.import_dir(tiny_idx_dir, "kmnist", None, None, str(tmp_path))
    said = describe.import_dir(tiny_idx_dir, None, "zeta", LETTERS, str(tmp_path))
    listed = LETTERS.replace(",", ", ")
    assert said == f"imported zeta from {tiny_idx_dir} into {tmp_path / 'zeta' / '1.0.0'} (classes: {listed})"
    describe.import_dir(tiny_idx_dir, None, "alpha", "0,1,2,3,4,5,6,7,8,9", str(tmp_path))
    lines = describe.listing(str(tmp_path))
    assert [line.split()[:2] for line in lines[1:6]] == [
        ["mnist", "shipped"],
        ["fashion_mnist", "shipped"],
        ["kmnist", "shipped"],
        ["alpha", "imported"],
        ["zeta", "imported"],
    ]
    assert "train 512, test 100" in lines[3] and lines[5].endswith("classes: " + LETTERS.replace(",", ", "))


def test_describe_an_imported_dataset(tiny_idx_dir, tmp_path):
    describe.import_dir(tiny_idx_dir, None, "letters", LETTERS, str(tmp_path))
    text = "\n".join(describe.describe("letters", str(tmp_path)))
    assert f"imported from: {tiny_idx_dir}" in text and "(prepared)" in text and "split train: 512 examples" in text
    assert "classes (10): a, b, c" in text and "image: shape (28, 28, 1), dtype uint8" in text


def test_describe_says_how_to_prepare(tmp_path):
    catalog.write(catalog.Imported("letters", tuple(LETTERS.split(","))), tmp_path)  # an import that did not finish
    assert (
        describe.describe("letters", str(tmp_path))[-1]
        == f"to prepare: harness data import DIR --as letters --classes {LETTERS}"
    )
    assert "harness data import DIR --dataset kmnist" in describe.describe("kmnist", str(tmp_path))[-1]


def test_unknown_dataset_is_one_line(tmp_path):
    with pytest.raises(DataError, match=r"^unknown dataset 'nope'; allowed: mnist, fashion_mnist, kmnist \(shipped\)"):
        describe.describe("nope", str(tmp_path))
