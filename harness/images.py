"""The user's own pictures in the datasets' format: uint8 28×28×1, dark background, bright strokes.

What ``to_dataset_format`` does, in order (pure functions on numpy arrays; Pillow only resamples):

1. grayscale in [0, 255] (``load``: colour → luminance, transparency composited over white, 16-bit scaled down);
2. inversion: ``yes``, ``no`` or ``auto`` (inverted when the mean of the 1-pixel border is above mid-grey, i.e. the
   background is light: dark ink on paper becomes the datasets' bright strokes on black);
3. an image of exactly 28×28 is taken to be in the dataset's layout already and goes through as it is;
4. otherwise, as MNIST and Fashion-MNIST were made: the border's median level becomes 0 and the brightest pixel 255,
   the picture is cropped to its content (pixels above a quarter of that range), its longer side is resized to
   ``box`` pixels with the aspect ratio kept (Lanczos), and it is padded with black into 28×28: centred, then
   shifted so that its centre of mass sits at the centre, as far as the frame allows. ``BOX`` holds each dataset's
   box: MNIST's digits were fitted into 20×20 and centred by mass in 28×28; Fashion-MNIST's products were trimmed
   and their longer side resized to 28.

``.npy`` files (read with ``allow_pickle=False``) hold a 2-D (H, W) or (H, W, 1) array of uint8, or of floats in
[0, 1] (scaled by 255) or in [0, 255] (a float array whose maximum is ≤ 1 counts as [0, 1]).
Every unreadable input raises ``DataError`` with one line naming the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from harness.errors import DataError

SIZE = 28
INVERT_CHOICES = ("auto", "yes", "no")
BOX = {"mnist": 20, "fashion_mnist": 28}  # the longer side of the content, in pixels, as each dataset was made
NPY_MAGIC = b"\x93NUMPY"
MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb limit, also applied to .npy arrays
NPY_ALLOWED = "expected a 2-D (H, W) or (H, W, 1) array of uint8, or of floats in [0, 1] or [0, 255]"


def load(path: str | Path) -> np.ndarray:
    """A picture file (anything Pillow reads) or a ``.npy`` array as a 2-D float32 grayscale array in [0, 255]."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not an image file")
    try:
        with path.open("rb") as f:
            head = f.read(len(NPY_MAGIC))
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not head:
        raise DataError(f"{path}: empty file")
    gray = _load_npy(path) if head == NPY_MAGIC else _load_picture(path)
    if gray.size == 0:
        raise DataError(f"{path}: empty image ({gray.shape[1]}×{gray.shape[0]} pixels)")
    return gray


def _load_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)  # reads the header only
    except ValueError as e:
        if "pickle" in str(e) or "object" in str(e).lower():
            raise DataError(f"{path}: this .npy needs pickle to load, which is refused; {NPY_ALLOWED}") from None
        raise DataError(f"{path}: not a readable .npy file ({_one_line(e)})") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy file ({_one_line(e)})") from None
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2 or not (array.dtype == np.uint8 or np.issubdtype(array.dtype, np.floating)):
        raise DataError(f"{path}: array of shape {array.shape} and dtype {array.dtype}; {NPY_ALLOWED}")
    if array.size > MAX_PIXELS:
        raise DataError(f"{path}: {array.size} pixels, more than the {MAX_PIXELS} allowed")
    gray = np.array(array, dtype=np.float32)
    return gray if array.dtype == np.uint8 else _float_range(gray, path)


def _float_range(gray: np.ndarray, path: Path) -> np.ndarray:
    """Floats in [0, 1] → ×255; in [0, 255] → as they are; anything else refused."""
    if gray.size == 0:
        return gray
    if not np.isfinite(gray).all():
        raise DataError(f"{path}: the array holds NaN or infinite values; {NPY_ALLOWED}")
    low, high = float(gray.min()), float(gray.max())
    if low < 0 or high > 255:
        raise DataError(f"{path}: values from {low:g} to {high:g}; {NPY_ALLOWED}")
    return gray * 255 if high <= 1 else gray


def _load_picture(path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return _grayscale(ImageOps.exif_transpose(img), path)
    except UnidentifiedImageError:
        raise DataError(
            f"{path}: not an image Pillow can read (PNG, JPEG, BMP, GIF, TIFF, …) nor a .npy array"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{path}: too large (more than {MAX_PIXELS} pixels)") from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt data; Pillow uses all three
        raise DataError(f"{path}: damaged image file ({_one_line(e)})") from None


def _grayscale(img: Image.Image, path: Path) -> np.ndarray:
    """Any Pillow mode → float32 luminance in [0, 255]."""
    if img.mode.startswith("I;16"):
        return np.asarray(img.convert("F"), dtype=np.float32) / 257
    if img.mode in ("I", "F"):
        gray = np.asarray(img.convert("F"), dtype=np.float32)
        if img.mode == "I" and gray.size and gray.max() > 255:
            gray = gray / 257  # 16-bit samples held in a 32-bit mode
        return _float_range(gray, path)
    if "A" in img.getbands() or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.asarray(img.convert("L"), dtype=np.float32)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def should_invert(gray: np.ndarray, invert: str = "auto") -> bool:
    """``yes`` / ``no`` as said; ``auto``: whether the 1-pixel border's mean is above mid-grey (light background)."""
    if invert not in INVERT_CHOICES:
        raise DataError(f"--invert {invert}: allowed: {', '.join(INVERT_CHOICES)}")
    if invert != "auto":
        return invert == "yes"
    return bool(_border(gray).mean() > 127.5)


def _border(gray: np.ndarray) -> np.ndarray:
    return np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])


def to_dataset_format(gray: np.ndarray, invert: str = "auto", box: int = 20) -> np.ndarray:
    """A 2-D grayscale array in [0, 255] as a uint8 (28, 28, 1) image: dark background, bright strokes."""
    gray = np.asarray(gray, dtype=np.float32)
    if should_invert(gray, invert):
        gray = 255 - gray
    if gray.shape != (SIZE, SIZE):
        gray = _fit(_crop(_stretch(gray)), box)
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)[:, :, None]


def _stretch(gray: np.ndarray) -> np.ndarray:
    """The border's median level → 0, the brightest pixel → 255 (a blank picture → all 0)."""
    low, high = float(np.median(_border(gray))), float(gray.max())
    if high - low < 1:
        return np.zeros_like(gray)
    return np.clip((gray - low) * (255 / (high - low)), 0, 255)


def _crop(gray: np.ndarray) -> np.ndarray:
    """The bounding box of the pixels above a quarter of full brightness (all of it when there are none)."""
    rows, cols = np.nonzero(gray > 255 / 4)
    if not len(rows):
        return gray
    return gray[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _fit(gray: np.ndarray, box: int) -> np.ndarray:
    """Longer side resized to ``box`` (aspect kept), padded into 28×28, centred by mass as far as the frame allows."""
    h, w = gray.shape
    scale = box / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    small = np.clip(small, 0, 255)
    out = np.zeros((SIZE, SIZE), dtype=np.float32)
    top, left = (SIZE - size[1]) // 2, (SIZE - size[0]) // 2
    if small.sum() > 0:
        ys, xs = np.indices(small.shape)
        cy, cx = (ys * small).sum() / small.sum(), (xs * small).sum() / small.sum()
        top = int(np.clip(round(SIZE / 2 - 0.5 - cy), 0, SIZE - size[1]))
        left = int(np.clip(round(SIZE / 2 - 0.5 - cx), 0, SIZE - size[0]))
    out[top : top + size[1], left : left + size[0]] = small
    return out
