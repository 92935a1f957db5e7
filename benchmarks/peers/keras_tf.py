"""The harness's MLP and CNN in Keras 3 on TensorFlow (model.fit-style compiled train step), timed like
`harness bench`, and trained to a target accuracy with the recipe of the config `harness bench tta` times
(:func:`harness.peers.recipe`). TensorFlow is an optional peer only; the harness itself never needs it."""

from __future__ import annotations

import os
import time

import numpy as np

from harness.bench import summarize, time_windows
from harness.peers import Recipe, recipe

NAME = "keras3-tensorflow"


def available() -> tuple[bool, str]:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import keras
        import tensorflow  # noqa: F401
    except ImportError:
        return False, "keras/tensorflow are not installed (pip install -e '.[peers]')"
    if keras.backend.backend() != "tensorflow":
        return False, f"keras runs on {keras.backend.backend()}, not tensorflow (set KERAS_BACKEND=tensorflow)"
    return True, ""


def differences(copied: Recipe) -> list[str]:
    """What this peer cannot copy exactly of ``copied``, in words (the ledger row's ``figures.differences``)."""
    streams = ["initial weights", "data order"]
    streams += ["augmentation"] * bool(copied.translate or copied.flip or copied.cutout)
    streams += ["dropout masks"] * bool(copied.dropout)
    found = [
        f"random draws ({', '.join(streams)}): Keras's generators seeded with the run's seed, not harness's "
        "fold_in(seed, step, example) keys; the same distributions"
    ]
    if copied.optimizer in ("adam", "adamw"):
        found.append(
            "Adam's epsilon: Keras adds it to sqrt(v) before the bias correction (in effect epsilon / "
            "sqrt(1 - beta2^t)), optax after"
        )
    if copied.optimizer == "sgd" and copied.momentum and copied.schedule.name != "constant":
        found.append(
            "SGD momentum: Keras's velocity sums learning rate × gradient, optax's trace is scaled by the current "
            "learning rate: the same at a constant rate, not under a schedule"
        )
    if copied.ema_decay:
        found.append(
            "EMA: Keras's decay is constant from the first step (which copies the weights), harness's warms up as "
            "min(decay, (1 + t) / (10 + t)) from the initial weights"
        )
    return found


def _cutout_layer(size: int):
    """A Keras layer zeroing a ``size``×``size`` square centred at a uniformly drawn pixel of each training image
    (harness.augment's cutout); the identity outside training."""
    import keras
    from keras import ops

    class Cutout(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.seeds = keras.random.SeedGenerator()

        def call(self, x, training=None):
            if not training:
                return x
            n, h, w = ops.shape(x)[0], x.shape[1], x.shape[2]
            top = keras.random.randint((n, 1), 0, h, seed=self.seeds) - size // 2
            left = keras.random.randint((n, 1), 0, w, seed=self.seeds) - size // 2
            rows, cols = ops.arange(h)[None, :], ops.arange(w)[None, :]
            in_rows = ops.logical_and(rows >= top, rows < top + size)
            in_cols = ops.logical_and(cols >= left, cols < left + size)
            inside = ops.logical_and(in_rows[:, :, None, None], in_cols[:, None, :, None])
            return ops.where(inside, ops.zeros_like(x), x)

    return Cutout()


def _augmentation(copied: Recipe) -> list:
    """Preprocessing layers, active in training only, in harness's order: translate, flip, cutout. A translation
    factor of (px + ½)/28 with nearest-pixel sampling draws whole-pixel shifts uniformly in [-px, px], as harness."""
    from keras import layers

    found = []
    if copied.translate:
        factor = (copied.translate + 0.5) / 28
        found.append(layers.RandomTranslation(factor, factor, "constant", "nearest", fill_value=0.0))
    if copied.flip:
        found.append(layers.RandomFlip("horizontal"))
    if copied.cutout:
        found.append(_cutout_layer(copied.cutout))
    return found


def _network(copied: Recipe):
    """The recipe's model (harness.models' layers and initialisers) behind its augmentation."""
    import keras
    from keras import layers

    init = {"kernel_initializer": "lecun_normal"}  # Flax's default, biases zero in both

    def drop():
        return [layers.Dropout(copied.dropout)] if copied.dropout else []

    if copied.model == "mlp":
        body = [layers.Flatten()]
        for units in copied.hidden:
            body += [layers.Dense(units, activation="relu", **init), *drop()]
    else:
        body = []
        for channels in copied.channels:
            body.append(layers.Conv2D(channels, 3, padding="same", use_bias=not copied.batch_norm, **init))
            if copied.batch_norm:
                body.append(layers.BatchNormalization(momentum=copied.bn_momentum, epsilon=copied.bn_epsilon))
            body += [layers.ReLU(), layers.MaxPooling2D(2) if copied.pool == "max" else layers.AveragePooling2D(2)]
        body += [layers.Flatten(), *drop(), layers.Dense(copied.dense, activation="relu", **init), *drop()]
    body.append(layers.Dense(copied.classes, **init))
    return keras.Sequential([keras.Input((28, 28, 1)), *_augmentation(copied), layers.Rescaling(1 / 255.0), *body])


def learning_rate(copied: Recipe, steps_per_epoch: int):
    """The recipe's learning rate for a Keras optimizer: a float, or a ``LearningRateSchedule`` evaluating
    :meth:`harness.peers.Schedule.at` at the optimizer's step (0 at the first update, as optax counts)."""
    import keras

    schedule = copied.schedule
    if schedule.name == "constant":
        return schedule.peak

    class Schedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return schedule.at(keras.ops.cast(step, "float32"), steps_per_epoch, keras.ops)

    return Schedule()


def optimizer(copied: Recipe, steps_per_epoch: int):
    """The recipe's optimizer (with an EMA of the weights when it keeps one)."""
    import keras

    lr = learning_rate(copied, steps_per_epoch)
    ema = {"use_ema": True, "ema_momentum": copied.ema_decay} if copied.ema_decay else {}
    if copied.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=copied.momentum, nesterov=copied.nesterov, **ema)
    if copied.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=copied.weight_decay, epsilon=copied.adam_epsilon, **ema)
    return keras.optimizers.Adam(lr, epsilon=copied.adam_epsilon, **ema)


def compiled(copied: Recipe, steps_per_epoch: int):
    """The recipe's network compiled with its optimizer and loss (one-hot targets, smoothed as harness does)."""
    import keras

    net = _network(copied)
    net.compile(
        optimizer=optimizer(copied, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=copied.label_smoothing),
        jit_compile=False,
    )
    return net


def _accuracy(net, eval_flip: bool, images: np.ndarray, labels: np.ndarray) -> float:
    logits = net.predict(images, batch_size=1000, verbose=0)
    if eval_flip:
        logits = (logits + net.predict(images[:, :, ::-1], batch_size=1000, verbose=0)) / 2
    return float(np.mean(np.argmax(logits, -1) == labels))


def accuracy(net, copied: Recipe, images: np.ndarray, labels: np.ndarray) -> float:
    """Test accuracy in inference mode, with the optimizer's EMA weights when it keeps them (swapped in for the
    evaluation, then back) and the test-time flip when the recipe asks for it."""
    if not copied.ema_decay:
        return _accuracy(net, copied.eval_flip, images, labels)
    saved = [v.numpy() for v in net.trainable_variables]
    net.optimizer.finalize_variable_values(net.trainable_variables)
    try:
        return _accuracy(net, copied.eval_flip, images, labels)
    finally:
        for variable, value in zip(net.trainable_variables, saved, strict=True):
            variable.assign(value)


def _model(name: str, width: int = 1):
    from harness import peers

    return _network(peers.scaled(name, width))


def measure(
    model: str, batch_size: int, width: int = 1, windows: int = 7, dispatches_per_window: int = 8, warmup: int = 3
) -> dict:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    net = _model(model, width)
    net.compile(
        optimizer=keras.optimizers.Adam(recipe().schedule.peak),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8192, 28, 28, 1), dtype=np.uint8).astype(np.float32)
    labels = rng.integers(0, 10, 8192).astype(np.int32)
    batches = [
        (tf.constant(images[i : i + batch_size]), tf.constant(labels[i : i + batch_size]))
        for i in range(0, 8192 - batch_size + 1, batch_size)
    ]
    cursor = 0

    def step():
        nonlocal cursor
        x, y = batches[cursor % len(batches)]
        cursor += 1
        return net.train_on_batch(x, y, return_dict=False)

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(warmup):
        step()
    times = time_windows(step, lambda out: out, windows, dispatches_per_window)
    return {
        "compile_seconds": 0.0,
        "time_to_first_step_seconds": first,
        **summarize(times, batch_size),
        "steps_per_window": dispatches_per_window,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
    }


def race(copied: Recipe, target: float, seed: int) -> dict:
    """One seed of `harness bench tta`'s protocol: wall seconds from the start (data loading and graph building
    included) to the first evaluation at or above ``target``, evaluating every ``eval_every_epochs`` epochs and
    after the last of ``num_epochs``."""
    import keras

    from harness.data import batches, datasets

    start = time.perf_counter()
    builder, _ = datasets.ensure_prepared(copied.dataset, copied.data_dir or None)
    train, test = datasets.load_split(builder, "train"), datasets.load_split(builder, "test")
    keras.utils.set_random_seed(seed)
    net = compiled(copied, batches.steps_per_epoch(len(train), copied.batch_size))
    targets = np.eye(copied.classes, dtype=np.float32)[train.labels]
    run = {"seed": seed, "seconds": None, "epochs": None, "accuracy": None}

    def evaluate(epoch: int, logs=None) -> None:
        done = epoch + 1
        if done % copied.eval_every_epochs and done != copied.num_epochs:
            return
        run["accuracy"] = accuracy(net, copied, test.images, test.labels)
        if run["accuracy"] >= target:
            run.update(seconds=time.perf_counter() - start, epochs=done)
            net.stop_training = True

    end = keras.callbacks.LambdaCallback(on_epoch_end=evaluate)
    net.fit(train.images, targets, batch_size=copied.batch_size, epochs=copied.num_epochs, callbacks=[end], verbose=0)
    return run


def time_to_accuracy(copied: Recipe, target: float, seeds: list[int]) -> dict:
    """:func:`race` per seed: median and spread over the seeds that reached ``target``, the recipe trained and
    what of it this peer could not copy."""
    import keras

    runs = [race(copied, target, seed) for seed in seeds]
    times = sorted(r["seconds"] for r in runs if r["epochs"])
    nan = float("nan")
    return {
        "seeds": len(seeds),
        "reached": len(times),
        "median_seconds": float(np.median(times)) if times else nan,
        "min_seconds": times[0] if times else nan,
        "max_seconds": times[-1] if times else nan,
        "runs": runs,
        "recipe": copied.as_dict(),
        "differences": differences(copied),
        "keras": keras.__version__,
    }
