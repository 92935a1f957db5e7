"""Shared picture plumbing: one style, PNG files and a self-contained HTML page.

Importing harness changes no matplotlib setting: figures are drawn inside :func:`drawing`, which applies the style
for the duration (``matplotlib.rc_context``) and picks the Agg backend only when none was chosen and there is no
display (a notebook's or the user's backend is left alone).
"""

from __future__ import annotations

import base64
import contextlib
import html
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np

from harness.errors import HarnessError

IMAGE_CMAP = "gray_r"  # ink dark on white, as the article shows digits
MATRIX_CMAP = "Blues"
ACCENT = "#1f77b4"
DPI = 100

STYLE = {"figure.dpi": DPI, "savefig.dpi": DPI, "font.size": 9, "axes.titlesize": 11}


def _headless() -> bool:
    return sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@contextlib.contextmanager
def drawing() -> Iterator[None]:
    """Harness' style while the block (or the decorated function) runs; Agg when no backend was chosen and there is
    no display. Wrap every function that creates figures or artists in it."""
    if matplotlib.rcParams._get_backend_or_none() is None and _headless():
        matplotlib.use("Agg")  # what matplotlib would pick after probing for GUI toolkits
    with matplotlib.rc_context(STYLE):
        yield


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """``path`` if pictures can be written there, else a one-line :class:`HarnessError`: a file, a folder under a
    file, or one in a place this user cannot write. Creates nothing."""
    path = Path(path).expanduser()
    nearest = path
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        where = "is a file" if nearest == path else f"cannot be made: {nearest} is a file"
        raise HarnessError(f"{what} {path} {where}; name a folder for the pictures")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise HarnessError(f"{what} {path}: cannot write in {nearest}; name a folder you can write")
    return path


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = e.strerror or e
        raise HarnessError(f"{directory}: cannot write pictures here ({reason}); name a folder you can write") from None


def save(fig: plt.Figure, path: Path) -> Path:
    """Writes ``fig`` as a PNG (exactly its figure size × DPI pixels) and closes it."""
    path = Path(path)
    _make_dir(path.parent)
    fig.savefig(path, format="png", facecolor="white", dpi=DPI)
    plt.close(fig)
    return path


def figure_to_array(path: Path) -> np.ndarray:
    """The RGB(A) pixels of a PNG written by :func:`save` (for TensorBoard images and tests)."""
    return matplotlib.image.imread(str(path))


@drawing()
def image_grid(
    images: np.ndarray,
    titles: Sequence[str],
    cols: int,
    suptitle: str,
    cell: float = 1.0,
    title_size: float = 7,
) -> plt.Figure:
    """A grid of 28×28 images with a small title over each."""
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell, rows * cell * 1.18 + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles, strict=False):
        ax.imshow(np.asarray(image).reshape(28, 28), cmap=IMAGE_CMAP, vmin=0, vmax=255)
        ax.set_title(title, fontsize=title_size, pad=2)
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def _embed(png: Path) -> str:
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(png).stem)}">'


def html_page(title: str, sections: Sequence[tuple[str, str, Path | str]]) -> str:
    """One self-contained page: each section is (heading, text, PNG path or raw HTML)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}"
        "img{max-width:100%;border:1px solid #ddd}section{margin-bottom:2.5em}"
        ".scroll{overflow-x:auto;max-width:100%}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 5px;text-align:right;white-space:nowrap}th{background:#f3f3f3}"
        "pre{white-space:pre-wrap}"
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, text, content in sections:
        body = _embed(content) if isinstance(content, Path) else content
        parts.append(f"<section><h2>{html.escape(heading)}</h2><p>{html.escape(text)}</p>{body}</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def html_table(header: Sequence[str], rows: Sequence[Sequence], scroll: bool = True) -> str:
    """A plain HTML table (in a horizontally scrolling box when ``scroll``)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f"<div class='scroll'>{table}</div>" if scroll else table
