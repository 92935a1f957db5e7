"""Flax NNX models, registered by name. No device code here.

Models take uint8 (or float) images of shape (N, 28, 28, 1), scale them to [0, 1] and compute in ``dtype``
(float32 or bfloat16); parameters are float32 and logits come back as float32.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from harness.config import ALLOWED
from harness.data.idx import NUM_CLASSES

IMAGE_PIXELS = 28 * 28


def _scale(x: jnp.ndarray, dtype) -> jnp.ndarray:
    return x.astype(dtype) / 255.0 if jnp.issubdtype(x.dtype, jnp.integer) else x.astype(dtype)


class MLP(nnx.Module):
    """The seed article's network: flatten → Dense(hidden) relu … → Dense(10)."""

    def __init__(self, hidden: Sequence[int] = (128,), *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        sizes = (IMAGE_PIXELS, *hidden)
        dense = partial(nnx.Linear, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.hidden = nnx.List([dense(i, o) for i, o in itertools.pairwise(sizes)])
        self.out = dense(sizes[-1], NUM_CLASSES)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = _scale(x, self.dtype).reshape(x.shape[0], -1)
        for layer in self.hidden:
            x = nnx.relu(layer(x))
        return self.out(x).astype(jnp.float32)


CONV_IMPLS = tuple(c for c in ALLOWED["conv"] if c != "auto")  # one source: the config's allowed values


def conv_same_slices(x: jnp.ndarray, kernel: jnp.ndarray, bias: jnp.ndarray, dtype=jnp.float32) -> jnp.ndarray:
    """A stride-1 'SAME' convolution as one matmul over k×k shifted slices (im2col), the same maths as
    ``nnx.Conv``. XLA:CPU runs its gradients as plain matmuls, much faster than its convolution backward."""
    n, h, w, c = x.shape
    kh, kw, _, out = kernel.shape
    x = x.astype(dtype)
    padded = jnp.pad(x, ((0, 0), (kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2), (0, 0)))
    cols = jnp.concatenate([padded[:, i : i + h, j : j + w, :] for i in range(kh) for j in range(kw)], axis=-1)
    y = cols.reshape(n * h * w, kh * kw * c) @ kernel.astype(dtype).reshape(kh * kw * c, out)
    return y.reshape(n, h, w, out) + bias.astype(dtype)


class CNN(nnx.Module):
    """conv 3×3 → relu → avg-pool 2 → conv 3×3 → relu → avg-pool 2 → Dense → relu → Dense(10).

    ``conv`` picks how the convolutions run: ``xla`` (``nnx.Conv``: right on GPU/TPU) or ``slices``
    (:func:`conv_same_slices`, faster on CPU); the parameters are the same either way.
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64),
        dense: int = 256,
        *,
        dtype=jnp.float32,
        conv: str = "xla",
        rngs: nnx.Rngs,
    ):
        if conv not in CONV_IMPLS:
            raise ValueError(f"conv={conv!r}: allowed: {', '.join(CONV_IMPLS)}")
        self.dtype, self.conv = dtype, conv
        c1, c2 = channels
        common = dict(dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.conv1 = nnx.Conv(1, c1, kernel_size=(3, 3), **common)
        self.conv2 = nnx.Conv(c1, c2, kernel_size=(3, 3), **common)
        self.dense = nnx.Linear(7 * 7 * c2, dense, **common)
        self.out = nnx.Linear(dense, NUM_CLASSES, **common)

    def _conv(self, layer: nnx.Conv, x: jnp.ndarray) -> jnp.ndarray:
        if self.conv == "xla":
            return layer(x)
        return conv_same_slices(x, layer.kernel[...], layer.bias[...], self.dtype)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = _scale(x, self.dtype)
        x = nnx.avg_pool(nnx.relu(self._conv(self.conv1, x)), window_shape=(2, 2), strides=(2, 2))
        x = nnx.avg_pool(nnx.relu(self._conv(self.conv2, x)), window_shape=(2, 2), strides=(2, 2))
        x = nnx.relu(self.dense(x.reshape(x.shape[0], -1)))
        return self.out(x).astype(jnp.float32)


def _times(sizes: Sequence[int], config) -> tuple[int, ...]:
    """``sizes`` multiplied by ``config.width`` (the model-scale axis of ``harness bench --widths``)."""
    return tuple(int(s) * config.width for s in sizes)


def _mlp(config, dtype, conv, rngs):
    return MLP(_times(config.mlp_hidden, config), dtype=dtype, rngs=rngs)


def _cnn(config, dtype, conv, rngs):
    return CNN(_times(config.cnn_channels, config), config.cnn_dense * config.width, dtype=dtype, conv=conv, rngs=rngs)


FAMILIES = ("mlp", "cnn")  # a "cnn" has convolutions: the conv implementation and micro-batch policy apply


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered model: its family and how to build it from (config, dtype, conv, rngs)."""

    family: str
    make: Callable


MODELS: dict[str, Entry] = {
    "mlp": Entry("mlp", _mlp),
    "cnn": Entry("cnn", _cnn),
    # the tiny test models: fixed sizes, times config.width too
    "mlp_tiny": Entry("mlp", lambda config, dtype, conv, rngs: MLP(_times((16,), config), dtype=dtype, rngs=rngs)),
    "cnn_tiny": Entry(
        "cnn",
        lambda config, dtype, conv, rngs: CNN(
            _times((4, 8), config), 16 * config.width, dtype=dtype, conv=conv, rngs=rngs
        ),
    ),
}


def family(name: str) -> str:
    """The family (``mlp`` or ``cnn``) of the registered model ``name``."""
    return MODELS[name].family


def create(config, conv: str = "xla", seed: int | None = None) -> nnx.Module:
    """Builds the model named by ``config.model`` with ``config.dtype`` compute, initialised from the seed;
    ``conv`` is the resolved convolution implementation (see :func:`harness.plan.conv_impl`)."""
    dtype = jnp.dtype(config.dtype)
    return MODELS[config.model].make(config, dtype, conv, nnx.Rngs(config.seed if seed is None else seed))


def param_count(model: nnx.Module) -> int:
    """Number of scalar parameters."""
    return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
