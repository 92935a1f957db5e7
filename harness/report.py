"""``harness report WORKDIR``: learning curves, a confusion matrix, the most confident mistakes and the run's
summary, as PNGs, one self-contained ``index.html`` and TensorBoard images. Written at the end of training too."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from harness import pictures
from harness.data import datasets
from harness.errors import DataError, WorkdirError
from harness.evaluate import load_trained, probabilities
from harness.records import row_from_dict, rows_of

WORST = 24


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def read_metrics(workdir: Path, warn: Callable[[str], Any] = _stderr) -> list[dict]:
    """The rows of ``WORKDIR/metrics.jsonl``; a line that is not a JSON object is skipped with a warning."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        raise WorkdirError(f"{workdir}: no metrics.jsonl (train into this workdir first)")
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row_from_dict(row))
        else:
            warn(f"warning: {path}, line {number}: not a JSON object, skipped")
    return rows


def _test_builder(config, workdir: Path):
    """The prepared builder of the data the run trained on: ``config.data_dir`` from its ``config.json``. A run
    on tfds' default data dir is only read from the default now, never prepared there (it may be another dir)."""
    data_dir = config.get("data_dir") or None
    if data_dir is None:
        b = datasets.builder(config.dataset)
        if not b.is_prepared():
            raise DataError(
                f"{workdir} trained on tfds' default data dir (config.data_dir is empty) and {config.dataset} is not "
                f"prepared in the current default ({b.data_dir}); set TFDS_DATA_DIR to the data dir it trained with"
            )
    return datasets.ensure_prepared(config.dataset, data_dir)[0]


@pictures.drawing()
def learning_curves(rows: list[dict]) -> plt.Figure:
    """Train and test loss, and test accuracy, against epochs."""
    train = [r for r in rows_of(rows, "train") if "train_loss" in r]
    evals = rows_of(rows, "eval")
    fig, (loss, acc) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        loss.plot(
            [r["epoch"] for r in train],
            [r["train_loss"] for r in train],
            color="#9ecae1",
            lw=1,
            label="train (logged steps)",
        )
    loss.plot(
        [r["epoch"] for r in evals],
        [r["train_loss"] for r in evals],
        "o-",
        color=pictures.ACCENT,
        label="train (epoch mean)",
    )
    loss.plot([r["epoch"] for r in evals], [r["test_loss"] for r in evals], "s-", color="#d62728", label="test")
    loss.set_xlabel("epoch")
    loss.set_ylabel("cross-entropy loss")
    loss.set_title("Loss")
    loss.legend()
    acc.plot([r["epoch"] for r in evals], [r["test_accuracy"] for r in evals], "s-", color="#d62728")
    for r in evals[-1:]:
        acc.annotate(
            f"{r['test_accuracy']:.4f}",
            (r["epoch"], r["test_accuracy"]),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
        )
    acc.margins(y=0.2)
    acc.set_xlabel("epoch")
    acc.set_ylabel("test accuracy")
    acc.set_title("Test accuracy")
    for ax in (loss, acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def confusion(labels: np.ndarray, predicted: np.ndarray, n: int) -> np.ndarray:
    """counts[true, predicted]."""
    return np.bincount(labels * n + predicted, minlength=n * n).reshape(n, n)


@pictures.drawing()
def confusion_figure(counts: np.ndarray, names: list[str]) -> plt.Figure:
    """The confusion matrix with counts in the cells, and per-class accuracy beside it."""
    n = len(names)
    per_class = np.diag(counts) / np.maximum(counts.sum(axis=1), 1)
    fig, (ax, side) = plt.subplots(1, 2, figsize=(12, 6.5), gridspec_kw={"width_ratios": [3, 1]})
    ax.imshow(counts, cmap=pictures.MATRIX_CMAP)
    top = counts.max()
    for (t, p), v in np.ndenumerate(counts):
        ax.text(p, t, str(v), ha="center", va="center", fontsize=8, color="white" if v > top / 2 else "#222")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix ({counts.sum()} test images)")
    side.barh(range(n), per_class, color=pictures.ACCENT)
    side.set_yticks(range(n), names)
    side.invert_yaxis()
    side.set_xlim(0, 1.18)
    side.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    side.set_xlabel("accuracy")
    side.set_title("Per-class accuracy")
    for k, a in enumerate(per_class):
        side.text(a + 0.01, k, f"{a:.3f}", va="center", fontsize=8)
    fig.tight_layout()
    return fig


@pictures.drawing()
def worst_mistakes(images: np.ndarray, labels: np.ndarray, probs: np.ndarray, names: list[str]) -> plt.Figure:
    """The most confidently misclassified images, with true and predicted labels and the probability."""
    predicted = probs.argmax(-1)
    wrong = np.flatnonzero(predicted != labels)
    order = wrong[np.argsort(-probs[wrong, predicted[wrong]])][:WORST]
    titles = [f"#{i} true {names[labels[i]]}\npred {names[predicted[i]]} {probs[i, predicted[i]]:.2f}" for i in order]
    title = f"The {len(order)} most confident mistakes (of {len(wrong)})"
    fig = pictures.image_grid(images[order], titles, 6, title, cell=1.9, title_size=7.5)
    if not len(order):
        fig.text(0.5, 0.5, "no misclassified test images", ha="center", va="center", fontsize=14)
    return fig


def per_class_table(counts: np.ndarray, names: list[str]) -> str:
    """Per-class accuracy, test images and the class most often predicted instead, as an HTML table."""
    rows = []
    for k, name in enumerate(names):
        total = counts[k].sum()
        others = counts[k].copy()
        others[k] = 0
        confused = f"{names[int(others.argmax())]} ({others.max()})" if others.max() else "—"
        rows.append([name, f"{counts[k, k] / max(total, 1):.3f}", total, confused])
    return pictures.html_table(["class", "accuracy", "test images", "most often taken for"], rows, scroll=False)


def _summary_table(config: dict, rows: list[dict], meta: dict) -> str:
    evals = rows_of(rows, "eval")
    speeds = [r["examples_per_sec"] for r in rows_of(rows, "train") if "examples_per_sec" in r]
    facts = [
        ("step", meta["step"]),
        ("final test accuracy", f"{evals[-1]['test_accuracy']:.4f}" if evals else "n/a"),
        ("final test loss", f"{evals[-1]['test_loss']:.4f}" if evals else "n/a"),
        ("training time (s)", f"{meta.get('train_seconds', 0.0):.1f}"),
        ("median examples/s", f"{np.median(speeds):,.0f}" if speeds else "n/a"),
        ("devices", f"{meta['fingerprint']['platform']}×{meta['fingerprint']['device_count']}"),
    ]
    facts += [(f"config.{k}", v) for k, v in sorted(config.items())]
    return pictures.html_table(["", "value"], facts, scroll=False)


def _tensorboard_images(workdir: Path, pngs: dict, step: int) -> None:
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(workdir / "tensorboard"))
    for name, path in pngs.items():
        writer.add_image(f"report/{name}", pictures.figure_to_array(path)[:, :, :3], step, dataformats="HWC")
    writer.close()


def write_report(workdir: Path, out: Path | None = None) -> Path:
    """Writes the report of ``workdir``'s latest checkpoint into ``out`` (default ``WORKDIR/report``)."""
    workdir = Path(workdir).resolve()
    out = pictures.check_output_dir(out, "--out") if out else workdir / "report"
    rows = read_metrics(workdir)
    config, run, meta = load_trained(workdir)
    test = datasets.load_split(_test_builder(config, workdir), "test")
    names = datasets.class_names(config.dataset, config.get("data_dir") or None)
    probs = probabilities(run, test.images)
    counts = confusion(test.labels, probs.argmax(-1), len(names))
    pngs = {
        "learning_curves": pictures.save(learning_curves(rows), out / "learning_curves.png"),
        "confusion_matrix": pictures.save(confusion_figure(counts, names), out / "confusion_matrix.png"),
        "worst_mistakes": pictures.save(
            worst_mistakes(test.images, test.labels, probs, names), out / "worst_mistakes.png"
        ),
    }
    accuracy = np.trace(counts) / counts.sum()
    sections = [
        (
            "Learning curves",
            "From metrics.jsonl: loss per logged step and per epoch, test accuracy per epoch.",
            pngs["learning_curves"],
        ),
        ("Confusion matrix", f"All {len(test)} test images; accuracy {accuracy:.4f}.", pngs["confusion_matrix"]),
        (
            "Per-class accuracy",
            "How often each class is recognised, and what it is mistaken for.",
            per_class_table(counts, names),
        ),
        (
            "Most confident mistakes",
            "Wrong predictions sorted by the probability the model gave them.",
            pngs["worst_mistakes"],
        ),
        ("Run", "The config, throughput and timing of this run.", _summary_table(config.to_dict(), rows, meta)),
    ]
    page = out / "index.html"
    page.write_text(
        pictures.html_page(f"{config.model} on {config.dataset} — {workdir.name}", sections), encoding="utf-8"
    )
    _tensorboard_images(workdir, pngs, meta["step"])
    return page
