"""Pure train and eval steps over pytrees (NNX split/merge functional form). No device code here.

Steps return *sums* (loss, correct predictions, example count) so that padded batches, several devices and
several steps all aggregate exactly. ``reduce`` is the one hook for collectives: identity on one device or under
``jit`` sharding (the batch is one global array there), a ``psum`` over the device axis under ``pmap`` — for the
gradients and sums, and for BatchNorm's batch statistics inside the model.

What a step does besides the plain update is in :class:`Options` (all off by default: the plain step, the same
program as before they existed): augmentation (:mod:`harness.augment`) and dropout keyed by ``(seed, step, global
example index)``, label smoothing, a parameter EMA, test-time flips. BatchNorm's running statistics and the EMA are
fields of :class:`TrainState`, so checkpoints and resumption carry them like the parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from harness import augment as augment_lib
from harness.data.batches import gather
from harness.models import Training

Reduce = Callable[[Any], Any]


def identity(tree: Any) -> Any:
    """The ``reduce`` of a single device or a jit-sharded global batch."""
    return tree


@struct.dataclass
class TrainState:
    """Everything that changes during training, as a pytree. The optional parts are None when their option is off
    (the pytree, and so a checkpoint, then has exactly the leaves it had before they existed)."""

    step: jax.Array
    params: Any
    opt_state: Any
    batch_stats: Any = None  # BatchNorm's running statistics (nnx.BatchStat), for a model with BatchNorm
    ema: Any = None  # the parameters' exponential moving average (config.ema_decay > 0)


@dataclasses.dataclass(frozen=True)
class Options:
    """What the steps do besides the plain update; the defaults do nothing."""

    seed: int = 0  # keys augmentation and dropout with the step and the example index
    augment: augment_lib.Augment = dataclasses.field(default_factory=augment_lib.Augment)
    dropout: bool = False  # the model drops out: the train step gives it per-example keys
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # > 0: the state keeps an EMA of the parameters (decay warming up to this), for evaluation
    eval_flip: bool = False  # evaluation and prediction average the logits of each image and its mirror

    @property
    def keyed(self) -> bool:
        """Whether the train step draws random numbers (and so needs the batch's global example indices)."""
        return self.augment.active or self.dropout

    @classmethod
    def from_config(cls, config) -> Options:
        return cls(
            seed=config.seed,
            augment=augment_lib.Augment.from_config(config),
            dropout=config.dropout > 0,
            label_smoothing=config.label_smoothing,
            ema_decay=config.ema_decay,
            eval_flip=config.eval_flip,
        )


def learning_rate(config, steps_per_epoch: int) -> Any:
    """``config.learning_rate`` under ``config.schedule`` over ``num_epochs × steps_per_epoch`` steps, of which the
    first ``warmup_fraction`` warm up: ``constant``; ``warmup_cosine`` (linear from 0, then cosine to 0);
    ``warmup_linear`` (linear from 0, then linear to 0); ``one_cycle`` (optax's cosine one-cycle: from lr/25 up to
    lr over the warmup share, then down to lr/250 000)."""
    peak, total = config.learning_rate, config.num_epochs * steps_per_epoch
    warmup = round(config.warmup_fraction * total)
    if config.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=total
        )
    if config.schedule == "warmup_linear":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.linear_schedule(peak, 0.0, total - warmup)], [warmup]
        )
    if config.schedule == "one_cycle":
        return optax.cosine_onecycle_schedule(total, peak, pct_start=config.warmup_fraction)
    return peak


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optax optimizer named by ``config.optimizer`` with ``config.schedule``."""
    lr = learning_rate(config, steps_per_epoch)
    if config.optimizer == "sgd":
        return optax.sgd(lr, momentum=config.momentum or None, nesterov=config.nesterov)
    if config.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=config.weight_decay)
    return optax.adam(lr)


def init_state(
    model: nnx.Module, tx: optax.GradientTransformation, ema: bool = False
) -> tuple[nnx.GraphDef, TrainState]:
    """Splits ``model`` into its static graph and a fresh :class:`TrainState` (with BatchNorm statistics when the
    model has them; with an EMA, starting at the parameters, when ``ema``)."""
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return graphdef, TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        batch_stats=stats if jax.tree.leaves(stats) else None,
        ema=jax.tree.map(jnp.copy, params) if ema else None,
    )


def inference(state: TrainState) -> Any:
    """The variables evaluation and prediction run on: the EMA of the parameters when the state keeps one, else the
    parameters, with BatchNorm's running statistics when the model has them."""
    params = state.params if state.ema is None else state.ema
    return params if state.batch_stats is None else nnx.merge_state(params, state.batch_stats)


def start_from(fresh: TrainState, trained: TrainState) -> TrainState:
    """A new run's state from a trained one's (fine-tuning): its evaluated parameters (the EMA when it kept one)
    and BatchNorm statistics; step and optimizer state start anew, an EMA restarts at those parameters (its decay
    warming up again from step 0)."""
    params = trained.params if trained.ema is None else trained.ema
    return fresh.replace(params=params, batch_stats=trained.batch_stats, ema=None if fresh.ema is None else params)


EMA_WARMUP = 10.0  # the EMA's decay at update t is min(decay, (1 + t) / (EMA_WARMUP + t)), as TF's num_updates


def ema_decay(decay: float, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The EMA's decay at update ``step`` (0 for the first) and its complement: ``min(decay, (1 + t) / (10 + t))``,
    TF's ``ExponentialMovingAverage(num_updates=t)``. In the warm-up the complement is ``9 / (10 + t)`` (exact, not
    ``1 - decay``); after it (t ≥ 8 990 at 0.999) the pair is ``(decay, 1 - decay)``, the constant-decay update."""
    t = jnp.asarray(step, jnp.float32)
    warm = (1.0 + t) / (EMA_WARMUP + t)
    warming = warm < decay
    return jnp.where(warming, warm, decay), jnp.where(warming, (EMA_WARMUP - 1.0) / (EMA_WARMUP + t), 1.0 - decay)


def ema_update(ema: Any, params: Any, step: jax.Array, decay: float) -> Any:
    """The EMA after update ``step`` produced ``params``: ``keep · ema + (1 - keep) · params`` at the decay of
    :func:`ema_decay`. Started at the initial parameters p_0, the EMA after k ≤ 8 990 updates (decay 0.999) is
    ``Σ_{m=0..k} C(m+8, 8) / C(k+9, 9) · p_m``: p_0 weighs 1/C(k+9, 9) (2e-5 after 9 updates), the last tenth
    of the updates most. ``keep`` and its complement take each leaf's dtype, as the Python float did before."""
    keep, rate = ema_decay(decay, step)
    return jax.tree.map(lambda e, p: keep.astype(e.dtype) * e + rate.astype(p.dtype) * p, ema, params)


def _sums(logits: jax.Array, batch: dict, label_smoothing: float = 0.0) -> dict:
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], logits.shape[-1]), label_smoothing)
        per_example = optax.softmax_cross_entropy(logits, targets)
    else:
        per_example = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    w = batch["weight"]
    return {
        "loss": jnp.sum(per_example * w),
        "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * w),
        "count": jnp.sum(w),
    }


def _indices(batch: dict) -> jax.Array:
    if "index" not in batch:
        raise ValueError("augmentation and dropout need the batch's global example indices (batch['index'])")
    return batch["index"]


def _grads(
    graphdef: nnx.GraphDef, state: TrainState, batch: dict, micro_batches: int, options: Options, reduce: Reduce
) -> tuple[Any, tuple[dict, Any]]:
    """Gradients of the summed loss, the batch's sums and the new BatchNorm statistics, over ``micro_batches``
    sequential slices of the batch (the same maths: gradients of a sum add up; smaller slices can run faster, e.g.
    on a CPU). BatchNorm's statistics are the whole batch's: a model with them takes one slice."""
    stats = state.batch_stats

    def loss_fn(p, mb):
        # BatchNorm updates its statistics in place: on copies made in this trace (nnx refuses others)
        model = nnx.merge(graphdef, p) if stats is None else nnx.merge(graphdef, p, stats, copy=True)
        keys = None
        if options.dropout:
            keys = augment_lib.example_keys(options.seed, state.step, _indices(mb), augment_lib.DROPOUT_STREAM)
        sums = _sums(model(mb["image"], train=Training(mb["weight"], reduce, keys)), mb, options.label_smoothing)
        return sums["loss"], (sums, None if stats is None else nnx.state(model, nnx.BatchStat))

    grad = jax.grad(loss_fn, has_aux=True)
    if micro_batches == 1:
        return grad(state.params, batch)
    if stats is not None:
        raise ValueError("BatchNorm takes its statistics over the whole batch: micro_batches must be 1")
    chunks = jax.tree.map(lambda a: a.reshape(micro_batches, -1, *a.shape[1:]), batch)
    shapes = jax.eval_shape(grad, state.params, jax.tree.map(lambda a: a[0], chunks))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(lambda acc, mb: (jax.tree.map(jnp.add, acc, grad(state.params, mb)), None), zeros, chunks)
    return total


def update(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    state: TrainState,
    batch: dict,
    reduce: Reduce = identity,
    micro_batches: int = 1,
    options: Options = Options(),
) -> tuple[TrainState, dict]:
    """The train step: one optimizer step on ``batch`` (``image``, ``label``, ``weight``, and ``index``, the
    global example indices, when ``options`` augment or drop out); returns the new state and the batch's sums.
    Everything else that trains is this function, composed."""
    if options.augment.active:
        keys = augment_lib.example_keys(options.seed, state.step, _indices(batch), augment_lib.AUGMENT_STREAM)
        batch = {**batch, "image": augment_lib.augment(batch["image"], keys, options.augment)}
    grads, (sums, stats) = _grads(graphdef, state, batch, micro_batches, options, reduce)
    grads, sums = reduce((grads, sums))
    grads = jax.tree.map(lambda g: g / jnp.maximum(sums["count"], 1.0), grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = None if state.ema is None else ema_update(state.ema, params, state.step, options.ema_decay)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, batch_stats=stats, ema=ema), sums


def train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    state: TrainState,
    data: dict,
    indices: jax.Array,
    reduce: Reduce = identity,
    micro_batches: int = 1,
    options: Options = Options(),
) -> tuple[TrainState, dict]:
    """:func:`update` on the batch ``indices`` of device-resident ``data`` (gathered on the device)."""
    batch = gather(data, indices)
    if options.keyed:
        batch["index"] = indices
    return update(graphdef, tx, state, batch, reduce, micro_batches, options)


def train_steps(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    state: TrainState,
    data: dict,
    indices: jax.Array,
    reduce: Reduce = identity,
    micro_batches: int = 1,
    options: Options = Options(),
) -> tuple[TrainState, dict]:
    """Several :func:`train_step` in one dispatch (``indices`` is [steps, batch]); returns the summed sums."""

    def body(carry, idx):
        return train_step(graphdef, tx, carry, data, idx, reduce, micro_batches, options)

    state, sums = jax.lax.scan(body, state, indices)
    return state, jax.tree.map(lambda x: x.sum(0), sums)


def _logits(graphdef: nnx.GraphDef, variables: Any, images: jax.Array, flip: bool) -> jax.Array:
    """Evaluation logits (BatchNorm's running statistics, no dropout); with ``flip``, the mean of the logits of
    each image and its mirror (test-time augmentation)."""
    model = nnx.merge(graphdef, variables)
    logits = model(images)
    if flip:
        logits = (logits + model(augment_lib.flip_horizontal(images))) / 2
    return logits


def eval_step(
    graphdef: nnx.GraphDef,
    variables: Any,
    data: dict,
    indices: jax.Array,
    reduce: Reduce = identity,
    eval_flip: bool = False,
) -> dict:
    """Loss/accuracy sums of the batch ``indices`` of ``data`` (padding has weight 0) under ``variables``
    (:func:`inference` of a state; the parameters alone for a model without BatchNorm)."""
    batch = gather(data, indices)
    return reduce(_sums(_logits(graphdef, variables, batch["image"], eval_flip), batch))


def predict_probs(graphdef: nnx.GraphDef, variables: Any, images: jax.Array, eval_flip: bool = False) -> jax.Array:
    """Class probabilities for ``images`` under ``variables`` (:func:`inference` of a state)."""
    return jax.nn.softmax(_logits(graphdef, variables, images, eval_flip), axis=-1)
