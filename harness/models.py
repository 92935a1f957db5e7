"""Flax NNX models, registered by name. No device code here.

Models take uint8 (or float) images of shape (N, 28, 28, 1), scale them to [0, 1] and compute in ``dtype``
(float32 or bfloat16); parameters are float32 and logits come back as float32.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from harness.config import ALLOWED
from harness.data.idx import NUM_CLASSES

IMAGE_PIXELS = 28 * 28


def _scale(x: jnp.ndarray, dtype) -> jnp.ndarray:
    return x.astype(dtype) / 255.0 if jnp.issubdtype(x.dtype, jnp.integer) else x.astype(dtype)


@dataclasses.dataclass(frozen=True)
class Training:
    """What a model needs in a train step besides the images (evaluation passes none: running statistics, no
    dropout). The train step (:mod:`harness.steps`) makes it."""

    weight: jax.Array  # [N]: 1 for an example, 0 for padding (BatchNorm's statistics leave padding out)
    reduce: Callable[[Any], Any] = lambda tree: tree  # sums over the devices (pmap's psum), else the identity
    keys: jax.Array | None = None  # [N] per-example PRNG keys for dropout (harness.augment.example_keys), or None


BN_MOMENTUM = 0.9  # running statistics: 0.9 × old + 0.1 × the batch's (PyTorch's 0.1; Flax's default is 0.99)
BN_EPSILON = 1e-5


class BatchNorm(nnx.Module):
    """Batch normalisation over every axis but the last, with statistics of the *global* batch: the sums of the
    (unpadded) examples are added over the devices by ``train.reduce`` before the moments are taken, so one device,
    ``jit`` over several and ``pmap`` compute the same mean and variance. Computed in float32 whatever the model's
    dtype; the running statistics (``nnx.BatchStat``) are what evaluation uses."""

    def __init__(self, features: int, *, dtype=jnp.float32):
        self.dtype = dtype
        self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((features,), jnp.float32))

    def _batch_moments(self, x: jax.Array, train: Training) -> tuple[jax.Array, jax.Array]:
        axes = tuple(range(x.ndim - 1))
        w = train.weight.astype(jnp.float32).reshape(-1, *([1] * (x.ndim - 1)))
        per_example = int(np.prod(x.shape[1:-1]))
        total, squares, count = train.reduce(
            (jnp.sum(w * x, axes), jnp.sum(w * x * x, axes), jnp.sum(train.weight.astype(jnp.float32)) * per_example)
        )
        mean = total / jnp.maximum(count, 1.0)
        return mean, jnp.maximum(squares / jnp.maximum(count, 1.0) - mean * mean, 0.0)

    def __call__(self, x: jax.Array, train: Training | None = None) -> jax.Array:
        x32 = x.astype(jnp.float32)
        if train is None:
            mean, var = self.mean[...], self.var[...]
        else:
            mean, var = self._batch_moments(x32, train)
            m = BN_MOMENTUM
            self.mean[...] = m * self.mean[...] + (1 - m) * jax.lax.stop_gradient(mean)
            self.var[...] = m * self.var[...] + (1 - m) * jax.lax.stop_gradient(var)
        y = (x32 - mean) * jax.lax.rsqrt(var + BN_EPSILON) * self.scale[...] + self.bias[...]
        return y.astype(self.dtype)


def dropout(x: jax.Array, rate: float, train: Training | None, layer: int) -> jax.Array:
    """Inverted dropout of ``x`` [N, …] at ``rate`` in a train step with keys (else ``x`` as it is): example ``n``'s
    mask is drawn from ``fold_in(train.keys[n], layer)`` alone, so it does not depend on the devices."""
    if not rate or train is None or train.keys is None:
        return x
    shape = x.shape[1:]
    keep = jax.vmap(lambda key: jax.random.bernoulli(jax.random.fold_in(key, layer), 1.0 - rate, shape))(train.keys)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype)).astype(x.dtype)


class MLP(nnx.Module):
    """The seed article's network: flatten → Dense(hidden) relu … → Dense(10); ``dropout`` after each hidden layer
    in training."""

    def __init__(self, hidden: Sequence[int] = (128,), *, dtype=jnp.float32, rngs: nnx.Rngs, dropout: float = 0.0):
        self.dtype, self.dropout = dtype, dropout
        sizes = (IMAGE_PIXELS, *hidden)
        dense = partial(nnx.Linear, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.hidden = nnx.List([dense(i, o) for i, o in itertools.pairwise(sizes)])
        self.out = dense(sizes[-1], NUM_CLASSES)

    def __call__(self, x: jnp.ndarray, train: Training | None = None) -> jnp.ndarray:
        x = _scale(x, self.dtype).reshape(x.shape[0], -1)
        for i, layer in enumerate(self.hidden):
            x = dropout(nnx.relu(layer(x)), self.dropout, train, i)
        return self.out(x).astype(jnp.float32)


CONV_IMPLS = tuple(c for c in ALLOWED["conv"] if c != "auto")  # one source: the config's allowed values
NORMS = ALLOWED["norm"]


def conv_same_slices(x: jnp.ndarray, kernel: jnp.ndarray, bias: jnp.ndarray | None, dtype=jnp.float32) -> jnp.ndarray:
    """A stride-1 'SAME' convolution as one matmul over k×k shifted slices (im2col), the same maths as
    ``nnx.Conv``. XLA:CPU runs its gradients as plain matmuls, much faster than its convolution backward."""
    n, h, w, c = x.shape
    kh, kw, _, out = kernel.shape
    x = x.astype(dtype)
    padded = jnp.pad(x, ((0, 0), (kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2), (0, 0)))
    cols = jnp.concatenate([padded[:, i : i + h, j : j + w, :] for i in range(kh) for j in range(kw)], axis=-1)
    y = cols.reshape(n * h * w, kh * kw * c) @ kernel.astype(dtype).reshape(kh * kw * c, out)
    y = y.reshape(n, h, w, out)
    return y if bias is None else y + bias.astype(dtype)


POOLS = ("avg", "max")  # the CNN's pooling after each convolution (config.cnn_pool)


def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """2×2 max pooling, stride 2, of an NHWC batch with even H and W: ``nnx.max_pool``'s values as a reshape and a
    max. XLA:CPU runs its gradient as elementwise compares, ~9× faster than ``max_pool``'s select-and-scatter (an
    18.2 vs 2.0 ms gradient at 32×28×28×32 on the 2-core EPYC), so the max-pooling CNN trains 2.4× faster."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class CNN(nnx.Module):
    """conv 3×3 → [BatchNorm] → relu → pool 2 → conv 3×3 → [BatchNorm] → relu → pool 2 → [dropout] → Dense → relu →
    [dropout] → Dense(10); ``pool``: ``avg`` (average pooling, the default) or ``max``.

    ``conv`` picks how the convolutions run: ``xla`` (``nnx.Conv``: right on GPU/TPU) or ``slices``
    (:func:`conv_same_slices`, faster on CPU); the parameters are the same either way. ``norm="batch"`` adds
    :class:`BatchNorm` after each convolution; ``dropout`` drops the inputs of both dense layers in training.
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64),
        dense: int = 256,
        *,
        dtype=jnp.float32,
        conv: str = "xla",
        rngs: nnx.Rngs,
        norm: str = "none",
        dropout: float = 0.0,
        pool: str = "avg",
    ):
        if pool not in POOLS:
            raise ValueError(f"pool={pool!r}: allowed: {', '.join(POOLS)}")
        if conv not in CONV_IMPLS:
            raise ValueError(f"conv={conv!r}: allowed: {', '.join(CONV_IMPLS)}")
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r}: allowed: {', '.join(NORMS)}")
        self.dtype, self.conv, self.dropout, self.pool = dtype, conv, dropout, pool
        c1, c2 = channels
        common = dict(dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        batch = norm == "batch"  # BatchNorm's shift replaces the convolutions' bias (a bias there gets no gradient)
        self.conv1 = nnx.Conv(1, c1, kernel_size=(3, 3), use_bias=not batch, **common)
        self.conv2 = nnx.Conv(c1, c2, kernel_size=(3, 3), use_bias=not batch, **common)
        self.dense = nnx.Linear(7 * 7 * c2, dense, **common)
        self.out = nnx.Linear(dense, NUM_CLASSES, **common)
        self.norm1 = BatchNorm(c1, dtype=dtype) if batch else None
        self.norm2 = BatchNorm(c2, dtype=dtype) if batch else None

    def _conv(self, layer: nnx.Conv, x: jnp.ndarray) -> jnp.ndarray:
        if self.conv == "xla":
            return layer(x)
        return conv_same_slices(x, layer.kernel[...], None if layer.bias is None else layer.bias[...], self.dtype)

    def _block(self, layer: nnx.Conv, norm: BatchNorm | None, x: jnp.ndarray, train: Training | None) -> jnp.ndarray:
        x = self._conv(layer, x)
        if norm is not None:
            x = norm(x, train)
        if self.pool == "max":
            return max_pool_2x2(nnx.relu(x))
        return nnx.avg_pool(nnx.relu(x), window_shape=(2, 2), strides=(2, 2))

    def __call__(self, x: jnp.ndarray, train: Training | None = None) -> jnp.ndarray:
        x = _scale(x, self.dtype)
        x = self._block(self.conv2, self.norm2, self._block(self.conv1, self.norm1, x, train), train)
        x = nnx.relu(self.dense(dropout(x.reshape(x.shape[0], -1), self.dropout, train, 0)))
        return self.out(dropout(x, self.dropout, train, 1)).astype(jnp.float32)


def regularisation(config, family: str) -> dict:
    """The model's keyword arguments from the config's regularisation keys: ``dropout`` (both families) and
    ``norm`` (the CNN family only; config validation refuses BatchNorm for an MLP)."""
    return {"dropout": config.dropout, **({"norm": config.norm} if family == "cnn" else {})}


def _times(sizes: Sequence[int], config) -> tuple[int, ...]:
    """``sizes`` multiplied by ``config.width`` (the model-scale axis of ``harness bench --widths``)."""
    return tuple(int(s) * config.width for s in sizes)


def _mlp(config, dtype, conv, rngs):
    return MLP(_times(config.mlp_hidden, config), dtype=dtype, rngs=rngs, **regularisation(config, "mlp"))


def _cnn(config, dtype, conv, rngs):
    return CNN(
        _times(config.cnn_channels, config),
        config.cnn_dense * config.width,
        dtype=dtype,
        conv=conv,
        rngs=rngs,
        pool=config.cnn_pool,
        **regularisation(config, "cnn"),
    )


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
    "mlp_tiny": Entry(
        "mlp",
        lambda config, dtype, conv, rngs: MLP(
            _times((16,), config), dtype=dtype, rngs=rngs, **regularisation(config, "mlp")
        ),
    ),
    "cnn_tiny": Entry(
        "cnn",
        lambda config, dtype, conv, rngs: CNN(
            _times((4, 8), config),
            16 * config.width,
            dtype=dtype,
            conv=conv,
            rngs=rngs,
            **regularisation(config, "cnn"),
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
