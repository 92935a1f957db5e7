"""Evaluation and prediction from a trained workdir (its config and latest checkpoint)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ml_collections
import numpy as np

from harness import images as image_files
from harness import steps
from harness.build import Run, build, place_data, restore_latest, saved_config
from harness.data import datasets
from harness.errors import DataError, WorkdirError
from harness.loop import evaluate


def load_trained(workdir: str | Path) -> tuple[ml_collections.ConfigDict, Run, dict]:
    """(config as saved, run holding the latest checkpoint's state on one device, checkpoint metadata) of the
    trained ``workdir``. The run evaluates and predicts with ``jit`` on one device, whatever the run trained on."""
    workdir = Path(workdir).resolve()
    config_file = workdir / "config.json"
    if not config_file.is_file():
        raise WorkdirError(f"{workdir}: no trained run here (config.json missing); train with --workdir {workdir}")
    try:
        saved = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise WorkdirError(f"{config_file}: not valid JSON ({e})") from None
    run = build(saved_config(saved, parallel="jit", num_devices=1))
    found = restore_latest(run, workdir, warn=lambda line: print(line, file=sys.stderr))
    if found is None:
        raise WorkdirError(f"{workdir}: no checkpoint restores (see `harness checkpoints {workdir}`)")
    _, state, meta = found
    run.state = run.par.replicate(state)
    return ml_collections.ConfigDict(saved), run, meta


def evaluate_workdir(workdir: str | Path) -> dict:
    """Test loss and accuracy of the latest checkpoint in ``workdir`` on the full test split."""
    config, run, meta = load_trained(workdir)
    builder, _ = datasets.ensure_prepared(config.dataset, config.data_dir or None)
    place_data(run, test=datasets.load_split(builder, "test"))
    result = evaluate(run.par, steps.inference(run.state), run.test, run.num_test, config.batch_size)
    return {**result, "step": meta["step"], "epoch": meta["step"] / meta["steps_per_epoch"], "dataset": config.dataset}


def probabilities(run: Run, images: np.ndarray, batch: int = 1000) -> np.ndarray:
    """Class probabilities of every image under the run's parameters (their EMA when the run kept one), ``batch``
    images at a time."""
    variables = steps.inference(run.state)
    chunks = [run.par.predict(variables, images[i : i + batch]) for i in range(0, len(images), batch)]
    return np.concatenate(chunks)


def top3(p: np.ndarray, names: list[str]) -> list[list]:
    """The three likeliest classes of one probability vector as ``[[name, probability], …]``, likeliest first."""
    return [[names[k], float(p[k])] for k in np.argsort(-p)[:3]]


def predict(workdir: str | Path, indices: list[int]) -> list[dict]:
    """For each test-split index — the position in the test IDX files (``t10k-*``), as imported, not tfds' stored
    order —: the true label, the predicted class and the top-3 probabilities."""
    config, run, _ = load_trained(workdir)
    builder, _ = datasets.ensure_prepared(config.dataset, config.data_dir or None)
    test = datasets.load_split(builder, "test")
    bad = [i for i in indices if not 0 <= i < len(test)]
    if bad:
        raise DataError(f"--index {bad[0]}: outside the test split (0..{len(test) - 1})")
    names = datasets.class_names(config.dataset, config.get("data_dir") or None)
    stored = datasets.file_positions("test", len(test))[indices]
    probs = probabilities(run, test.images[stored])
    rows = []
    for i, j, p in zip(indices, stored, probs, strict=True):
        top = top3(p, names)
        true = names[test.labels[j]]
        rows.append({"index": i, "true": true, "predicted": top[0][0], "correct": top[0][0] == true, "top3": top})
    return rows


def predict_images(workdir: str | Path, paths: list[str | Path], invert: str = "auto") -> list[dict]:
    """For each picture or .npy file: the predicted class and the top-3 probabilities (see ``harness.images``).

    Every file is read before the checkpoint is loaded, so a bad file fails fast.
    """
    grays = [image_files.load(path) for path in paths]
    config, run, _ = load_trained(workdir)
    box = image_files.BOX.get(config.dataset, 20)
    batch = np.stack([image_files.to_dataset_format(g, invert, box) for g in grays])
    names = datasets.class_names(config.dataset, config.get("data_dir") or None)
    rows = []
    for path, gray, p in zip(paths, grays, probabilities(run, batch), strict=True):
        top = top3(p, names)
        inverted = image_files.should_invert(gray, invert)
        rows.append({"file": str(path), "predicted": top[0][0], "inverted": inverted, "top3": top})
    return rows
