"""``harness explore``: the seed article's pictures of the data — a digit, its pixel grid, its 784-vector, a class,
the class means and balance, and the split as a table of 784 feature columns plus a label."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from harness import pictures
from harness.data.datasets import Split
from harness.errors import HarnessError

TABLE_ROWS = 10


def summary(split: Split, class_names: list[str], name: str, split_name: str) -> str:
    """Shapes, dtypes, value range and class counts, as text."""
    counts = np.bincount(split.labels, minlength=len(class_names))
    lines = [
        f"{name} {split_name}: {len(split)} examples",
        f"images: shape {split.images.shape}, dtype {split.images.dtype}, "
        f"values {int(split.images.min())}..{int(split.images.max())} (divide by 255 for 0..1)",
        f"labels: shape {split.labels.shape}, dtype {split.labels.dtype}, {len(class_names)} classes",
        "class counts: " + ", ".join(f"{n} {c}" for n, c in zip(class_names, counts, strict=True)),
    ]
    return "\n".join(lines)


@pictures.drawing()
def sample_grid(split: Split, names: list[str], per_class: int = 10) -> plt.Figure:
    """``per_class`` examples of every class, one row per class, labelled with the class name."""
    rows = []
    for k in range(len(names)):
        rows.extend(np.flatnonzero(split.labels == k)[:per_class].tolist())
    fig, axes = plt.subplots(len(names), per_class, figsize=(per_class * 0.9 + 1.6, len(names) * 0.9 + 0.6))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for k, name in enumerate(names):
        members = np.flatnonzero(split.labels == k)[:per_class]
        for j, i in enumerate(members):
            axes[k, j].imshow(split.images[i, :, :, 0], cmap=pictures.IMAGE_CMAP, vmin=0, vmax=255)
        axes[k, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle("Samples of every class")
    fig.tight_layout()
    return fig


@pictures.drawing()
def pixel_matrix(image: np.ndarray, title: str) -> plt.Figure:
    """One image as its 28×28 matrix: every pixel's value printed in its cell, shaded by intensity."""
    pixels = np.asarray(image).reshape(28, 28)
    fig, ax = plt.subplots(figsize=(11, 11))
    ax.imshow(pixels, cmap=pictures.IMAGE_CMAP, vmin=0, vmax=255)
    for (r, c), v in np.ndenumerate(pixels):
        ax.text(c, r, str(v), ha="center", va="center", fontsize=5.2, color="white" if v > 127 else "#333")
    ax.set_xticks(range(0, 28, 4))
    ax.set_yticks(range(0, 28, 4))
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    ax.set_title(title)
    fig.tight_layout()
    return fig


@pictures.drawing()
def flat_vector(image: np.ndarray, title: str) -> plt.Figure:
    """The same image flattened to its 784-vector: a strip of intensities and a bar per value."""
    flat = np.asarray(image).reshape(-1).astype(int)
    fig, (strip, bars) = plt.subplots(2, 1, figsize=(12, 4.2), gridspec_kw={"height_ratios": [1, 3]}, sharex=True)
    strip.imshow(flat[None, :], cmap=pictures.IMAGE_CMAP, vmin=0, vmax=255, aspect="auto")
    strip.set_yticks([])
    strip.set_title(title)
    bars.bar(np.arange(784), flat, width=1.0, color=pictures.ACCENT)
    for r in range(28, 784, 28):
        bars.axvline(r - 0.5, color="#ddd", lw=0.5, zorder=0)
    bars.set_xlim(-0.5, 783.5)
    bars.set_xticks(range(0, 785, 56))
    bars.set_xlabel("index in the 784-vector (row × 28 + column; grey lines: start of each image row)")
    bars.set_ylabel("pixel value")
    fig.tight_layout()
    return fig


@pictures.drawing()
def class_means_and_balance(split: Split, names: list[str]) -> plt.Figure:
    """The mean image of every class, and how many examples each class has."""
    fig = plt.figure(figsize=(12, 5.2))
    grid = fig.add_gridspec(2, 7)
    for k, name in enumerate(names):
        ax = fig.add_subplot(grid[k // 5, k % 5])
        members = split.images[split.labels == k]
        mean = members.mean(axis=0)[:, :, 0] if len(members) else np.zeros((28, 28))
        ax.imshow(mean, cmap=pictures.IMAGE_CMAP, vmin=0, vmax=255)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    balance = fig.add_subplot(grid[:, 5:])
    counts = np.bincount(split.labels, minlength=len(names))
    balance.barh(range(len(names)), counts, color=pictures.ACCENT)
    balance.set_yticks(range(len(names)), names)
    balance.invert_yaxis()
    balance.set_xlabel("examples")
    balance.set_title("Class balance")
    fig.suptitle("Mean image per class")
    fig.tight_layout()
    return fig


def table_html(split: Split, rows: int = TABLE_ROWS) -> str:
    """The first rows of the split as 784 feature columns plus the label: the "matrix to DataFrame" view."""
    header = [f"px{i}" for i in range(784)] + ["label"]
    body = [[*split.images[i].reshape(-1).tolist(), int(split.labels[i])] for i in range(min(rows, len(split)))]
    return pictures.html_table(["row", *header], [[i, *r] for i, r in enumerate(body)])


def explore(split: Split, names: list[str], name: str, split_name: str, out: Path, klass: int = 0) -> Path:
    """Writes every picture and ``index.html`` into ``out``; returns the page's path."""
    if not 0 <= klass < len(names):
        raise HarnessError(f"--class {klass}: allowed 0..{len(names) - 1} ({', '.join(names)})")
    if len(split) == 0:
        raise HarnessError(f"{name} {split_name} is empty")
    out = Path(out)
    first = 0  # the example shown as a matrix and as a vector
    label = names[split.labels[first]]
    members = np.flatnonzero(split.labels == klass)[:96]
    pngs = {
        "samples": pictures.save(sample_grid(split, names), out / "samples.png"),
        "pixels": pictures.save(
            pixel_matrix(split.images[first], f"Example #{first} ({label}): 28×28 pixel values"),
            out / "pixel_matrix.png",
        ),
        "vector": pictures.save(
            flat_vector(split.images[first], f"Example #{first} ({label}) as a 784-vector"),
            out / "flattened_vector.png",
        ),
        "class": pictures.save(
            pictures.image_grid(
                split.images[members],
                [f"#{i}" for i in members],
                12,
                f"{len(members)} examples of class {klass}: {names[klass]}",
            ),
            out / "one_class.png",
        ),
        "means": pictures.save(class_means_and_balance(split, names), out / "class_means.png"),
    }
    text = summary(split, names, name, split_name)
    sections = [
        ("Summary", "", "<pre>" + html.escape(text) + "</pre>"),
        ("Samples of every class", "Ten examples per class, one class per row.", pngs["samples"]),
        ("One image as a matrix", "Each cell holds a pixel value (0 = white, 255 = black ink).", pngs["pixels"]),
        ("The same image as a vector", "A model like the MLP sees the 28 rows laid end to end.", pngs["vector"]),
        (f"Class {names[klass]}", "Many examples of one class (--class chooses).", pngs["class"]),
        ("Class means and balance", "The average image of every class, and the class counts.", pngs["means"]),
        ("The split as a table", f"The first {TABLE_ROWS} rows: 784 feature columns and the label.", table_html(split)),
    ]
    page = out / "index.html"
    page.write_text(pictures.html_page(f"{name} — {split_name} split", sections), encoding="utf-8")
    return page
