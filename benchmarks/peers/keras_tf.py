"""The harness's MLP and CNN in Keras 3 on TensorFlow (model.fit-style compiled train step), timed like
`harness bench`. TensorFlow is an optional peer only; the harness itself never needs it."""

from __future__ import annotations

import os
import time

import numpy as np

from harness.bench import summarize, time_windows
from harness.peers import recipe

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


def _model(name: str):
    import keras
    from keras import layers

    if name == "mlp":
        body = [layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dense(10)]
    elif name == "cnn":
        body = [
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.AveragePooling2D(2),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.AveragePooling2D(2),
            layers.Flatten(),
            layers.Dense(256, activation="relu"),
            layers.Dense(10),
        ]
    else:
        raise ValueError(f"peer model {name!r}: mlp or cnn")
    return keras.Sequential([keras.Input((28, 28, 1)), layers.Rescaling(1 / 255.0), *body])


def measure(model: str, batch_size: int, windows: int = 7, dispatches_per_window: int = 8, warmup: int = 3) -> dict:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    net = _model(model)
    net.compile(
        optimizer=keras.optimizers.Adam(recipe().learning_rate),
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


def time_to_accuracy(dataset: str, target: float, seeds: list[int], max_epochs: int = 20) -> dict:
    """`harness bench tta`'s protocol for the CNN config (its Adam learning rate and batch size, shuffled epochs, the
    full test split evaluated after every epoch): wall seconds from the start, data loading and graph building
    included, to the first evaluation at or above ``target``; per seed."""
    import keras

    from harness.data import datasets

    c = recipe()
    runs = []
    for seed in seeds:
        start = time.perf_counter()
        builder, _ = datasets.ensure_prepared(dataset)
        train, test = datasets.load_split(builder, "train"), datasets.load_split(builder, "test")
        keras.utils.set_random_seed(seed)
        net = _model("cnn")
        net.compile(
            optimizer=keras.optimizers.Adam(c.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            jit_compile=False,
        )
        run = {"seed": seed, "seconds": None, "epochs": None, "accuracy": None}
        for epoch in range(1, max_epochs + 1):
            net.fit(train.images, train.labels, batch_size=c.batch_size, epochs=1, shuffle=True, verbose=0)
            _, accuracy = net.evaluate(test.images, test.labels, batch_size=1000, verbose=0)
            run["accuracy"] = float(accuracy)
            if accuracy >= target:
                run.update(seconds=time.perf_counter() - start, epochs=epoch)
                break
        runs.append(run)
    times = sorted(r["seconds"] for r in runs if r["epochs"])
    nan = float("nan")
    return {
        "seeds": len(seeds),
        "reached": len(times),
        "median_seconds": float(np.median(times)) if times else nan,
        "min_seconds": times[0] if times else nan,
        "max_seconds": times[-1] if times else nan,
        "runs": runs,
        "keras": keras.__version__,
    }
