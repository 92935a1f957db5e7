"""``harness data import`` and ``harness data info``: importing IDX files (a shipped dataset's, or the user's own
under a name of their own) and describing the datasets a data dir offers, as lines of text."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data import NAMES, catalog, datasets
from harness.errors import DataError


def import_dir(
    directory: Path, dataset: str | None, as_name: str | None, classes: str | None, data_dir: str | None
) -> str:
    """Imports the four IDX files in ``directory`` as the shipped ``dataset`` or as the user's ``as_name`` with
    ``classes`` (comma-separated); returns the line that says what was imported where."""
    if dataset is not None:
        if classes is not None:
            raise DataError(f"--classes goes with --as NAME; {dataset}'s class names are its own")
        b = datasets.prepare_from_dir(dataset, directory, data_dir)
        return f"imported {dataset} from {Path(directory).resolve()} into {b.data_dir}"
    catalog.check_name(as_name)
    if not classes:
        raise DataError(f"--as {as_name} needs --classes with one name per label, e.g. --classes zero,one,…")
    b = datasets.import_named(as_name, catalog.parse_classes(classes), directory, data_dir)
    names = ", ".join(b.info.features["label"].names)
    return f"imported {as_name} from {Path(directory).resolve()} into {b.data_dir} (classes: {names})"


def _sizes(b) -> str:
    if not b.is_prepared():
        return "not prepared"
    return ", ".join(f"{split} {b.info.splits[split].num_examples}" for split in ("train", "test"))


def listing(data_dir: str | None = None) -> list[str]:
    """One line per dataset, the shipped ones first, then the ones imported into the data dir (by name): kind,
    split sizes (or 'not prepared') and class names."""
    names = [*NAMES, *(m.name for m in catalog.imported(data_dir))]
    lines = [f"data dir: {catalog.root(data_dir)}"]
    for name in names:
        b = datasets.builder(name, data_dir)
        kind = "shipped" if name in NAMES else "imported"
        classes = ", ".join(b.info.features["label"].names)
        lines.append(f"{name:<16} {kind:<9} {_sizes(b):<24} classes: {classes}")
    lines.append(
        "details: harness data info --dataset NAME; import: harness data import DIR (--dataset NAME | --as NAME)"
    )
    return lines


def describe(name: str, data_dir: str | None = None) -> list[str]:
    """Where ``name`` lives, whether it is prepared, its splits, image shape and class names."""
    b = datasets.builder(name, data_dir)
    prepared = b.is_prepared()
    lines = [f"dataset: {name} (tfds builder {type(b).__module__}.{type(b).__name__}, version {b.version})"]
    meta = catalog.read(name, data_dir)
    if meta is not None:
        lines.append(f"imported from: {meta.source or '?'} (harness data import --as)")
    lines.append(f"data dir: {b.data_dir} ({'prepared' if prepared else 'not prepared'})")
    if prepared:
        lines += [f"split {split}: {info.num_examples} examples" for split, info in sorted(b.info.splits.items())]
    features = b.info.features
    lines.append(f"image: shape {features['image'].shape}, dtype {np.dtype(features['image'].np_dtype).name}")
    lines.append(f"classes ({features['label'].num_classes}): {', '.join(features['label'].names)}")
    if not prepared and meta is None:
        lines.append(f"to prepare: {datasets.no_data_message(name).split('; ', 1)[1]}")
    elif not prepared:
        lines.append(f"to prepare: harness data import DIR --as {name} --classes {','.join(meta.classes)}")
    return lines
