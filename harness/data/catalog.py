"""The datasets a data dir offers: the shipped ones (:data:`harness.data.NAMES`) and the user's own, imported by
``harness data import DIR --as NAME --classes a,b,…``.

An imported dataset lives where tfds puts any dataset, ``DATA_DIR/NAME/VERSION/``, and is described by a small
JSON file beside its version folders, ``DATA_DIR/NAME/harness-dataset.json``: its name, its class names and the
folder it was imported from. That file is how config validation, ``harness data info``, ``explore``, ``train``,
``eval`` and ``predict`` learn the name and its classes. It is parsed as data (``json``), never executed.

This module stays light (no tfds, no jax): config validation and the command line read it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from harness.data import NAMES
from harness.data.idx import NUM_CLASSES
from harness.errors import DataError

META_FILE = "harness-dataset.json"
FORMAT = "harness-imported-dataset/1"
NAME_RULE = "a lowercase letter, then up to 63 lowercase letters, digits or underscores"
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_CLASS_NAME = 64
RESERVED = ("downloads",)  # DATA_DIR/downloads is tfds' own


@dataclasses.dataclass(frozen=True)
class Imported:
    """A user's dataset: its name, its class names (label k is ``classes[k]``) and where it was imported from."""

    name: str
    classes: tuple[str, ...]
    source: str = ""


def root(data_dir: str | Path | None) -> Path:
    """The tfds data dir: ``data_dir``, else ``TFDS_DATA_DIR``, else ``~/tensorflow_datasets`` (as tfds)."""
    if data_dir:
        return Path(data_dir).expanduser()
    return Path(os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets").expanduser()


def nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_root(data_dir: str | Path | None) -> Path:
    """The data dir (:func:`root`), refused in one line when it cannot hold datasets: a file, or a folder whose
    closest existing ancestor is a file. A missing folder is fine (tfds creates it when it prepares a dataset)."""
    path = root(data_dir)
    how = " (TFDS_DATA_DIR)" if not data_dir and os.environ.get("TFDS_DATA_DIR") else ""
    found = nearest_existing(path)
    if not found.is_dir():
        what = "is a file" if found == path else f"cannot be made: {found} is a file"
        raise DataError(f"data dir {path}{how} {what}; name a folder for datasets (it is created when missing)")
    return path


def check_name(name: str) -> str:
    """``name`` if it can name an imported dataset; else a ``DataError`` saying what is allowed."""
    if name in NAMES:
        raise DataError(
            f"--as {name}: a shipped dataset's name; import its files with `--dataset {name}`, or choose another name"
        )
    if not _NAME.fullmatch(name):
        raise DataError(f"--as {name!r}: a dataset name is {NAME_RULE}")
    if name in RESERVED:
        raise DataError(f"--as {name}: tfds keeps its {name} folder in the data dir; choose another name")
    return name


def check_classes(classes: Sequence[str], where: str = "--classes") -> tuple[str, ...]:
    """The class names, stripped; a ``DataError`` for an empty, duplicated, unprintable or overlong one."""
    names = tuple(str(c).strip() for c in classes)
    for k, name in enumerate(names):
        if not name or not name.isprintable() or len(name) > MAX_CLASS_NAME:
            raise DataError(
                f"{where}: class {k} is {name!r}; each class name is 1..{MAX_CLASS_NAME} printable characters"
            )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"{where}: {', '.join(map(repr, duplicates))} named more than once; class names are unique")
    return names


def parse_classes(text: str) -> tuple[str, ...]:
    """``'a, b,c'`` → ``('a', 'b', 'c')``, checked by :func:`check_classes`."""
    return check_classes(text.split(","))


def check_labels(classes: Sequence[str], highest_label: int, directory: Path, outside: str = "") -> None:
    """The labels in the files (0..highest) must fit the models' NUM_CLASSES outputs, and the class names must
    match them; ``outside`` says which labels are beyond the outputs (e.g. `` (label 12: 1 example in train)``)."""
    count = highest_label + 1
    if count > NUM_CLASSES:  # first: naming more classes would not help, the models have NUM_CLASSES outputs
        raise DataError(
            f"{directory}: labels 0..{highest_label} make {count} classes{outside}; harness's models have "
            f"{NUM_CLASSES} outputs, so only {NUM_CLASSES}-class datasets (labels 0..{NUM_CLASSES - 1}) can be imported"
        )
    if len(classes) != count:
        raise DataError(
            f"--classes names {len(classes)} classes, but the labels in {directory} are 0..{highest_label} "
            f"({count} classes); give one name per label"
        )
    if count != NUM_CLASSES:
        raise DataError(
            f"{directory}: labels 0..{highest_label} make {count} classes; harness's models have {NUM_CLASSES} "
            f"outputs, so only {NUM_CLASSES}-class datasets can be imported"
        )


def _meta_path(name: str, data_dir: str | Path | None) -> Path:
    return root(data_dir) / name / META_FILE


def _from_json(path: Path, name: str) -> Imported:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read this dataset description ({e})") from None
    ok = isinstance(raw, dict) and raw.get("format") == FORMAT and raw.get("name") == name
    ok = ok and isinstance(raw.get("classes"), list) and all(isinstance(c, str) for c in raw["classes"])
    if not ok or len(raw["classes"]) != NUM_CLASSES:
        raise DataError(
            f"{path}: not a description harness wrote for {name!r} (format {FORMAT}, {NUM_CLASSES} class names); "
            "import the dataset again"
        )
    return Imported(name, check_classes(raw["classes"], str(path)), str(raw.get("source", "")))


def read(name: str, data_dir: str | Path | None = None) -> Imported | None:
    """The imported dataset ``name`` in the data dir, None when there is none (or ``name`` is not a valid name)."""
    if name in NAMES or not _NAME.fullmatch(name):
        return None
    check_root(data_dir)
    path = _meta_path(name, data_dir)
    return _from_json(path, name) if path.is_file() else None


def imported(data_dir: str | Path | None = None) -> list[Imported]:
    """Every dataset imported into the data dir, by name (a description that does not read is left out)."""
    found = []
    for path in sorted(check_root(data_dir).glob(f"*/{META_FILE}")):
        try:
            meta = read(path.parent.name, data_dir)
        except DataError:
            continue
        if meta is not None:
            found.append(meta)
    return found


def write(meta: Imported, data_dir: str | Path | None = None) -> Path:
    """Writes ``meta``'s description atomically (a temporary file renamed into place); returns its path."""
    path = _meta_path(meta.name, data_dir)
    body = {"format": FORMAT, "name": meta.name, "classes": list(meta.classes), "source": meta.source}
    tmp = path.with_name(f".{META_FILE}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{path}: cannot write the dataset description ({e.strerror or e})") from None
    return path


def allowed_text(data_dir: str | Path | None = None) -> str:
    """What a dataset name may be here: ``'mnist, … (shipped); letters (imported into DIR)'``."""
    names = [m.name for m in imported(data_dir)]
    mine = f"{', '.join(names)} (imported into {root(data_dir)})" if names else f"none imported into {root(data_dir)}"
    return f"{', '.join(NAMES)} (shipped); {mine}"


def check_dataset(name: str, data_dir: str | Path | None = None) -> None:
    """A ``DataError`` unless ``name`` is shipped or imported into the data dir (the message lists both)."""
    if name not in NAMES and read(name, data_dir) is None:
        raise DataError(f"unknown dataset {name!r}; allowed: {allowed_text(data_dir)}")
