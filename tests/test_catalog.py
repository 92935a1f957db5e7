"""harness.data.catalog: names and class names of the user's own datasets, their descriptions in the data dir."""

import json

import pytest

from harness.data import catalog
from harness.errors import DataError

DIGITS = [str(k) for k in range(10)]


@pytest.mark.parametrize("name", ["letters", "my_set2", "a", "x" * 64])
def test_good_names(name):
    assert catalog.check_name(name) == name


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("mnist", "a shipped dataset's name; import its files with `--dataset mnist`"),
        ("kmnist", "a shipped dataset's name"),
        ("Letters", "a lowercase letter, then"),
        ("2nd", "a lowercase letter, then"),
        ("my-set", "a lowercase letter, then"),
        ("../up", "a lowercase letter, then"),
        ("", "a lowercase letter, then"),
        ("x" * 65, "a lowercase letter, then"),
        ("downloads", "tfds keeps its downloads folder"),
    ],
)
def test_bad_names_are_one_line(name, fragment):
    with pytest.raises(DataError, match=r"^--as ") as e:
        catalog.check_name(name)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_class_names_are_stripped_and_may_be_any_printable_text():
    assert catalog.parse_classes(" o, ki ,T-shirt/top,お,5") == ("o", "ki", "T-shirt/top", "お", "5")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a,,b", "class 1 is ''"),
        ("a,b,", "class 2 is ''"),
        ("a,b\tc", "class 1 is 'b\\tc'"),
        ("a," + "y" * 65, "1..64 printable characters"),
        ("a,b,a,b,c", "'a', 'b' named more than once"),
    ],
)
def test_bad_class_names_are_one_line(text, fragment):
    with pytest.raises(DataError, match=r"^--classes: ") as e:
        catalog.parse_classes(text)
    assert fragment in str(e.value)


def test_the_class_names_must_match_the_labels_and_the_models_outputs(tmp_path):
    catalog.check_labels(DIGITS, 9, tmp_path)
    with pytest.raises(DataError, match=r"--classes names 3 classes, but the labels in .* are 0\.\.9 \(10 classes\)"):
        catalog.check_labels(["a", "b", "c"], 9, tmp_path)
    with pytest.raises(DataError, match=r"labels 0\.\.25 make 26 classes; harness's models have 10 outputs"):
        catalog.check_labels([f"c{k}" for k in range(26)], 25, tmp_path)
    with pytest.raises(DataError, match=r"make 2 classes; .* only 10-class datasets can be imported"):
        catalog.check_labels(["no", "yes"], 1, tmp_path)


def test_description_round_trip_and_listing(tmp_path):
    assert catalog.imported(tmp_path) == [] and catalog.read("letters", tmp_path) is None
    meta = catalog.Imported("letters", tuple("abcdefghij"), "/somewhere")
    path = catalog.write(meta, tmp_path)
    assert path == tmp_path / "letters" / catalog.META_FILE
    assert catalog.read("letters", tmp_path) == meta and catalog.imported(tmp_path) == [meta]
    assert [p.name for p in path.parent.iterdir()] == [catalog.META_FILE]  # no temporary file left
    assert catalog.read("mnist", tmp_path) is None and catalog.read("../letters", tmp_path) is None
    assert (
        catalog.allowed_text(tmp_path) == f"mnist, fashion_mnist, kmnist (shipped); letters (imported into {tmp_path})"
    )


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        json.dumps(["a"]),
        json.dumps({"format": catalog.FORMAT, "name": "other", "classes": DIGITS}),
        json.dumps({"format": "v0", "name": "letters", "classes": DIGITS}),
        json.dumps({"format": catalog.FORMAT, "name": "letters", "classes": DIGITS[:9]}),
        json.dumps({"format": catalog.FORMAT, "name": "letters", "classes": [*DIGITS[:9], 9]}),
        json.dumps({"format": catalog.FORMAT, "name": "letters", "classes": [*DIGITS[:9], "0"]}),
    ],
)
def test_a_description_that_does_not_read_is_one_line_naming_it_and_left_out_of_the_listing(tmp_path, body):
    path = tmp_path / "letters" / catalog.META_FILE
    path.parent.mkdir()
    path.write_text(body)
    with pytest.raises(DataError, match=f"^{path}: ") as e:
        catalog.read("letters", tmp_path)
    assert "\n" not in str(e.value)
    assert catalog.imported(tmp_path) == []
    with pytest.raises(DataError, match=f"^{path}: "):
        catalog.check_dataset("letters", tmp_path)


def test_the_data_dir_is_tfds_default_when_not_given(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env"))
    assert catalog.root(None) == catalog.root("") == tmp_path / "env"
    assert catalog.root(tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv("TFDS_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert catalog.root(None) == tmp_path / "tensorflow_datasets"


def test_check_dataset(tmp_path):
    catalog.check_dataset("kmnist", tmp_path / "none")
    with pytest.raises(DataError, match=r"unknown dataset 'letters'; allowed: .*none imported into"):
        catalog.check_dataset("letters", tmp_path)
    catalog.write(catalog.Imported("letters", tuple(DIGITS)), tmp_path)
    catalog.check_dataset("letters", tmp_path)
