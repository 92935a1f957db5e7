"""Pure train and eval steps over pytrees (NNX split/merge functional form). No device code here.

Steps return *sums* (loss, correct predictions, example count) so that padded batches, several devices and
several steps all aggregate exactly. ``reduce`` is the one hook for collectives: identity on one device or under
``jit`` sharding (the batch is one global array there), a ``psum`` over the device axis under ``pmap``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from harness.data.batches import gather

Reduce = Callable[[Any], Any]


def identity(tree: Any) -> Any:
    """The ``reduce`` of a single device or a jit-sharded global batch."""
    return tree


@struct.dataclass
class TrainState:
    """Everything that changes during training, as a pytree."""

    step: jax.Array
    params: Any
    opt_state: Any


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optax optimizer named by ``config.optimizer`` with ``config.schedule``."""
    lr: Any = config.learning_rate
    if config.schedule == "warmup_cosine":
        lr = optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=config.learning_rate,
            warmup_steps=round(config.warmup_fraction * config.num_epochs * steps_per_epoch),
            decay_steps=config.num_epochs * steps_per_epoch,
        )
    if config.optimizer == "sgd":
        return optax.sgd(lr, momentum=config.momentum or None)
    if config.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=config.weight_decay)
    return optax.adam(lr)


def init_state(model: nnx.Module, tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, TrainState]:
    """Splits ``model`` into its static graph and a fresh :class:`TrainState`."""
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def _sums(logits: jax.Array, batch: dict) -> dict:
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    w = batch["weight"]
    return {
        "loss": jnp.sum(per_example * w),
        "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * w),
        "count": jnp.sum(w),
    }


def _grads(graphdef: nnx.GraphDef, params: Any, batch: dict, micro_batches: int) -> tuple[Any, dict]:
    """Gradients of the summed loss and the batch's sums, over ``micro_batches`` sequential slices of the batch
    (the same maths: gradients of a sum add up; smaller slices can run faster, e.g. on a CPU)."""

    def loss_fn(p, mb):
        sums = _sums(nnx.merge(graphdef, p)(mb["image"]), mb)
        return sums["loss"], sums

    grad = jax.grad(loss_fn, has_aux=True)
    if micro_batches == 1:
        return grad(params, batch)
    chunks = jax.tree.map(lambda a: a.reshape(micro_batches, -1, *a.shape[1:]), batch)
    shapes = jax.eval_shape(grad, params, jax.tree.map(lambda a: a[0], chunks))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(lambda acc, mb: (jax.tree.map(jnp.add, acc, grad(params, mb)), None), zeros, chunks)
    return total


def update(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    state: TrainState,
    batch: dict,
    reduce: Reduce = identity,
    micro_batches: int = 1,
) -> tuple[TrainState, dict]:
    """The train step: one optimizer step on ``batch`` (``image``, ``label``, ``weight``); returns the new state
    and the batch's sums. Everything else that trains is this function, composed."""
    grads, sums = _grads(graphdef, state.params, batch, micro_batches)
    grads, sums = reduce((grads, sums))
    grads = jax.tree.map(lambda g: g / jnp.maximum(sums["count"], 1.0), grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), sums


def train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    state: TrainState,
    data: dict,
    indices: jax.Array,
    reduce: Reduce = identity,
    micro_batches: int = 1,
) -> tuple[TrainState, dict]:
    """:func:`update` on the batch ``indices`` of device-resident ``data`` (gathered on the device)."""
    return update(graphdef, tx, state, gather(data, indices), reduce, micro_batches)


def train_steps(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    state: TrainState,
    data: dict,
    indices: jax.Array,
    reduce: Reduce = identity,
    micro_batches: int = 1,
) -> tuple[TrainState, dict]:
    """Several :func:`train_step` in one dispatch (``indices`` is [steps, batch]); returns the summed sums."""

    def body(carry, idx):
        return train_step(graphdef, tx, carry, data, idx, reduce, micro_batches)

    state, sums = jax.lax.scan(body, state, indices)
    return state, jax.tree.map(lambda x: x.sum(0), sums)


def eval_step(graphdef: nnx.GraphDef, params: Any, data: dict, indices: jax.Array, reduce: Reduce = identity) -> dict:
    """Loss/accuracy sums of the batch ``indices`` of ``data`` (padding has weight 0)."""
    batch = gather(data, indices)
    return reduce(_sums(nnx.merge(graphdef, params)(batch["image"]), batch))


def predict_probs(graphdef: nnx.GraphDef, params: Any, images: jax.Array) -> jax.Array:
    """Class probabilities for ``images``."""
    return jax.nn.softmax(nnx.merge(graphdef, params)(images), axis=-1)
