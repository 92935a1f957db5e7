"""Batch order as one pure function, and the gather that builds a batch from device-resident data.

The order of examples is a function of ``(seed, epoch, step, global_batch_size)`` alone: the same global batch on
1, 2 or 8 devices, and a resumed run can continue at any step. An epoch visits every example exactly once; its
last batch is padded with index -1, which :func:`gather` turns into an example of weight 0.
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np

PAD = -1


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Number of batches that cover ``num_examples`` once (the last one padded)."""
    return math.ceil(num_examples / global_batch_size)


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int32)
    order.flags.writeable = False
    return order


def _window(order: np.ndarray, step: int, global_batch_size: int) -> np.ndarray:
    if not 0 <= step < steps_per_epoch(len(order), global_batch_size):
        raise IndexError(f"step {step} outside the epoch's {steps_per_epoch(len(order), global_batch_size)} steps")
    chunk = order[step * global_batch_size : (step + 1) * global_batch_size]
    return np.pad(chunk, (0, global_batch_size - len(chunk)), constant_values=PAD)


def batch_indices(seed: int, epoch: int, step: int, global_batch_size: int, num_examples: int) -> np.ndarray:
    """Indices (int32, length ``global_batch_size``, -1 = padding) of training batch ``step`` of ``epoch``."""
    return _window(_permutation(seed, epoch, num_examples), step, global_batch_size)


def eval_indices(step: int, global_batch_size: int, num_examples: int) -> np.ndarray:
    """Indices of evaluation batch ``step``: the split in order, the last batch padded with -1."""
    return _window(np.arange(num_examples, dtype=np.int32), step, global_batch_size)


def gather(data: dict, indices: jnp.ndarray) -> dict:
    """Builds a batch ``{'image', 'label', 'weight'}`` from device-resident ``data`` (inside a jitted step)."""
    safe = jnp.maximum(indices, 0)
    return {
        "image": jnp.take(data["image"], safe, axis=0),
        "label": jnp.take(data["label"], safe, axis=0),
        "weight": (indices >= 0).astype(jnp.float32),
    }
