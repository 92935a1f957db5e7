"""Flax NNX models, registered by name. No device code here.

Models take uint8 (or float) images of shape (N, 28, 28, 1), scale them to [0, 1] and compute in ``dtype``
(float32 or bfloat16); parameters are float32 and logits come back as float32.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

NUM_CLASSES = 10
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


class CNN(nnx.Module):
    """conv 3×3 → relu → avg-pool 2 → conv 3×3 → relu → avg-pool 2 → Dense → relu → Dense(10)."""

    def __init__(self, channels: Sequence[int] = (32, 64), dense: int = 256, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        c1, c2 = channels
        common = dict(dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.conv1 = nnx.Conv(1, c1, kernel_size=(3, 3), **common)
        self.conv2 = nnx.Conv(c1, c2, kernel_size=(3, 3), **common)
        self.dense = nnx.Linear(7 * 7 * c2, dense, **common)
        self.out = nnx.Linear(dense, NUM_CLASSES, **common)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = _scale(x, self.dtype)
        x = nnx.avg_pool(nnx.relu(self.conv1(x)), window_shape=(2, 2), strides=(2, 2))
        x = nnx.avg_pool(nnx.relu(self.conv2(x)), window_shape=(2, 2), strides=(2, 2))
        x = nnx.relu(self.dense(x.reshape(x.shape[0], -1)))
        return self.out(x).astype(jnp.float32)


def _mlp(config, dtype, rngs):
    return MLP(tuple(config.mlp_hidden), dtype=dtype, rngs=rngs)


MODELS: dict[str, Callable] = {
    "mlp": _mlp,
    "cnn": lambda config, dtype, rngs: CNN(dtype=dtype, rngs=rngs),
    "mlp_tiny": lambda config, dtype, rngs: MLP((16,), dtype=dtype, rngs=rngs),
    "cnn_tiny": lambda config, dtype, rngs: CNN((4, 8), 16, dtype=dtype, rngs=rngs),
}


def create(config, seed: int | None = None) -> nnx.Module:
    """Builds the model named by ``config.model`` with ``config.dtype`` compute, initialised from the seed."""
    dtype = jnp.dtype(config.dtype)
    return MODELS[config.model](config, dtype, nnx.Rngs(config.seed if seed is None else seed))


def param_count(model: nnx.Module) -> int:
    """Number of scalar parameters."""
    return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
