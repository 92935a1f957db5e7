"""Peers for `harness bench --peers`: the same models in other frameworks, from ``benchmarks/peers/*.py``.

Each peer module has ``NAME``, ``available() -> (bool, why)`` and ``measure(model, batch_size, windows,
dispatches_per_window) -> figures``; a peer that can also train to a target accuracy has
``time_to_accuracy(recipe, target, seeds) -> figures`` (with ``figures["differences"]``: what it cannot copy of
the recipe, in words). :func:`recipe` says what to train to copy a harness config — model, regularisation,
augmentation, optimizer, learning-rate schedule, EMA, batch size, epochs — read from the config and from the model
harness builds of it, never repeated in the peer modules. Their frameworks are optional extras
(``pip install 'harness[peers]'``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import ml_collections
import numpy as np

from harness import paths

PEERS_DIR = paths.shipped("peers")  # benchmarks/peers of the checkout, packaged in every wheel
RECIPE_CONFIG = "fashion_mnist_cnn"  # the config of `harness bench --peers` (throughput: its learning rate)

# Every key of harness.config.base_config() is in one of these two, so that a new key cannot be left out of the
# recipe unnoticed (tests/test_peers.py checks it). COPIED: what decides what is trained, which the recipe reads.
COPIED_KEYS = (
    *("dataset", "data_dir", "model", "mlp_hidden", "cnn_channels", "cnn_dense", "cnn_pool", "width", "dtype", "norm"),
    *("dropout", "augment_translate", "augment_flip", "augment_cutout", "label_smoothing", "eval_flip"),
    *("optimizer", "learning_rate", "momentum", "nesterov", "weight_decay", "schedule", "warmup_fraction"),
    *("ema_decay", "batch_size", "num_epochs", "eval_every_epochs", "init_from"),
)
# How harness runs it (the same maths however it is set: devices, dispatches, micro-batches, convolution
# implementation), what it writes, and what `bench tta` sets per run (seed, stop_at_accuracy).
RUN_KEYS = (
    *("conv", "steps_per_dispatch", "micro_batches", "parallel", "num_devices", "distributed", "seed"),
    *("log_every_steps", "checkpoint_every_steps", "checkpoint_min_seconds", "keep_checkpoints", "keep_best"),
    *("report", "stop_at_accuracy", "profile_steps"),
)
SCHEDULES = ("constant", "warmup_cosine", "warmup_linear", "one_cycle")
OPTIMIZERS = ("adam", "adamw", "sgd")
ADAM_EPSILON = 1e-8  # optax.adam's and optax.adamw's default, which harness uses (Keras's default is 1e-7)
ONE_CYCLE_DIVS = (25.0, 1e4)  # optax.cosine_onecycle_schedule's div_factor and final_div_factor, used by harness


class CannotFollow(ValueError):
    """A config the peers cannot train at all; the message says why."""


def _cosine(start, end, pct, ops):
    return end + (start - end) / 2.0 * (ops.cos(math.pi * pct) + 1)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """``config.schedule`` as numbers: the learning rate of each train step by the formulas of
    :func:`harness.steps.learning_rate` (optax's schedules), written once here for any array namespace."""

    name: str  # one of SCHEDULES
    peak: float  # config.learning_rate
    warmup_fraction: float
    num_epochs: int

    def steps(self, steps_per_epoch: int) -> tuple[int, int]:
        """(warmup steps, all steps), counted as harness counts them."""
        total = self.num_epochs * steps_per_epoch
        return round(self.warmup_fraction * total), total

    def at(self, step, steps_per_epoch: int, ops=np):
        """The learning rate of train step ``step`` (0 = the first; float) in ``ops``: numpy, or ``keras.ops``
        inside a Keras ``LearningRateSchedule``."""
        if self.name == "constant":
            return self.peak + 0.0 * step
        if self.name == "one_cycle":
            return self._one_cycle(step, steps_per_epoch, ops)
        warmup, total = self.steps(steps_per_epoch)
        rise = self.peak * ops.clip(step, 0, warmup) / warmup if warmup > 0 else 0.0 * step
        after, span = step - warmup, total - warmup
        if self.name == "warmup_cosine":
            fall = self.peak * 0.5 * (1 + ops.cos(math.pi * ops.minimum(after, span) / span))
        else:  # warmup_linear
            fall = self.peak * (1 - ops.clip(after, 0, span) / span)
        return ops.where(step < warmup, rise, fall)

    def _one_cycle(self, step, steps_per_epoch: int, ops):
        """optax.cosine_onecycle_schedule: cosine from peak/25 up to the peak over the warmup share, then down to
        peak/250 000, held there."""
        total = self.num_epochs * steps_per_epoch
        top = int(self.warmup_fraction * total)  # optax's boundary: int(), not round()
        div, final_div = ONE_CYCLE_DIVS
        low, end = self.peak / div, self.peak / (div * final_div)
        up = _cosine(low, self.peak, step / max(top, 1), ops)
        down = _cosine(self.peak, end, (step - top) / max(total - top, 1), ops)
        return ops.where(step < top, up, ops.where(step < total, down, end + 0.0 * step))


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What a peer trains to copy a harness config. ``model`` is ``mlp`` (flatten → Dense(h) relu [dropout] … →
    Dense(classes)) or ``cnn`` (conv 3×3 'same' → [BatchNorm] → relu → avg- or max-pool 2, twice → flatten → [dropout] →
    Dense(dense) relu → [dropout] → Dense(classes)), with the widths of the model harness builds (``params``:
    its parameter count, which a peer's model must equal). Weights start lecun-normal, biases zero, as in Flax."""

    dataset: str
    data_dir: str
    model: str  # mlp or cnn
    hidden: tuple[int, ...]  # mlp: the hidden layers' sizes
    channels: tuple[int, ...]  # cnn: the two convolutions' output channels
    dense: int  # cnn: the hidden dense layer's units
    pool: str  # cnn: avg or max, 2×2 after each convolution
    classes: int
    params: int
    batch_norm: bool  # cnn: BatchNorm after each convolution (which then has no bias)
    bn_momentum: float  # running statistics: momentum × old + (1 − momentum) × batch (Keras's convention too)
    bn_epsilon: float
    dropout: float
    translate: int  # shift each training image by a whole number of pixels in [-translate, translate] each way
    flip: bool  # mirror half of the training images left-right
    cutout: int  # zero a cutout×cutout square centred at a uniformly drawn pixel (it may reach past the border)
    label_smoothing: float
    optimizer: str  # adam, adamw or sgd
    momentum: float  # sgd: 0 = plain SGD
    nesterov: bool
    weight_decay: float  # adamw: decoupled, times the learning rate, on every parameter
    adam_epsilon: float
    schedule: Schedule
    ema_decay: float  # > 0: evaluate with an EMA of the trainable weights (BatchNorm's statistics as they are)
    eval_flip: bool  # evaluation averages the logits of each test image and its mirror
    batch_size: int
    num_epochs: int
    eval_every_epochs: int  # evaluate every N epochs and after the last
    dtype: str = "float32"

    def as_dict(self) -> dict:
        """Plain JSON-ready values (ledger figures)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Recipe:
        """The recipe of :meth:`as_dict`'s values (read back as JSON: lists for tuples)."""
        tuples = {k: tuple(values[k]) for k in ("hidden", "channels")}
        return cls(**{**values, **tuples, "schedule": Schedule(**values["schedule"])})


def _refusal(c: ml_collections.ConfigDict, known_models) -> str:
    """Why the peers cannot train ``c`` at all ('' when they can)."""
    if c.dtype != "float32":
        return f"config.dtype={c.dtype}: the peers train in float32 only"
    if c.init_from:
        return f"config.init_from={c.init_from!r}: the peers train from scratch"
    if c.optimizer not in OPTIMIZERS:
        return f"config.optimizer={c.optimizer}: the peers implement {', '.join(OPTIMIZERS)}"
    if c.schedule not in SCHEDULES:
        return f"config.schedule={c.schedule}: the peers implement {', '.join(SCHEDULES)}"
    if c.model not in known_models:
        return f"config.model={c.model}: not a harness model"
    return ""


def _layers(c: ml_collections.ConfigDict) -> dict:
    """The model harness builds of ``c`` (shapes only, nothing computed): its kind, widths and parameter count."""
    from flax import nnx

    from harness import models

    m = nnx.eval_shape(lambda: models.create(c))
    common = {"classes": m.out.out_features, "params": models.param_count(m)}
    if type(m) is models.MLP:
        return {"model": "mlp", "hidden": tuple(layer.out_features for layer in m.hidden), **common}
    if type(m) is models.CNN:
        channels = (m.conv1.out_features, m.conv2.out_features)
        return {"model": "cnn", "channels": channels, "dense": m.dense.out_features, **common}
    raise CannotFollow(f"config.model={c.model}: the peers build harness's MLP and CNN, not {type(m).__name__}")


def recipe(config: ml_collections.ConfigDict | None = None) -> Recipe:
    """What to train to copy ``config`` (default: the shipped ``RECIPE_CONFIG``); :class:`CannotFollow` when the
    peers cannot train it at all (another dtype, a model they do not build, fine-tuning)."""
    from harness import augment, models
    from harness import config as config_lib

    c = config_lib.load(RECIPE_CONFIG) if config is None else config
    why = _refusal(c, models.MODELS)
    if why:
        raise CannotFollow(why)
    aug = augment.Augment.from_config(c)
    return Recipe(
        **{"hidden": (), "channels": (), "dense": 0, **_layers(c)},
        dataset=c.dataset,
        data_dir=c.data_dir,
        batch_norm=c.norm == "batch",
        pool=c.cnn_pool,
        bn_momentum=models.BN_MOMENTUM,
        bn_epsilon=models.BN_EPSILON,
        dropout=float(c.dropout),
        translate=aug.translate,
        flip=aug.flip,
        cutout=aug.cutout,
        label_smoothing=float(c.label_smoothing),
        optimizer=c.optimizer,
        momentum=float(c.momentum) if c.optimizer == "sgd" else 0.0,
        nesterov=bool(c.nesterov),
        weight_decay=float(c.weight_decay) if c.optimizer == "adamw" else 0.0,
        adam_epsilon=ADAM_EPSILON,
        schedule=Schedule(c.schedule, float(c.learning_rate), float(c.warmup_fraction), c.num_epochs),
        ema_decay=float(c.ema_decay),
        eval_flip=bool(c.eval_flip),
        batch_size=c.batch_size,
        num_epochs=c.num_epochs,
        eval_every_epochs=c.eval_every_epochs,
    )


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"harness_peer_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def modules() -> list[ModuleType]:
    """The peer modules shipped in ``benchmarks/peers`` (the project's own code, in every wheel). Loading one
    imports no framework: that happens in :func:`run`'s own process."""
    return [_load(path) for path in sorted(PEERS_DIR.glob("*.py"))]


def scaled(model: str, width: int = 1) -> Recipe:
    """The recipe of the shipped config's training with ``model`` at ``width``: what a peer's throughput model
    copies (its widths and parameter count are those of the model harness builds)."""
    from harness import config as config_lib

    return recipe(config_lib.load(RECIPE_CONFIG, [f"model={model}", f"width={width}"]))


def measure_call(model: str, batch_size: int, width: int = 1, **kw) -> dict:
    """A :func:`run` call timing harness's model ``model`` with its widths times ``width`` at ``batch_size``
    (``kw``: the peer's ``measure`` options: ``windows``, ``dispatches_per_window``)."""
    return {"fn": "measure", "kwargs": {"model": model, "batch_size": batch_size, "width": width, **kw}}


def tta_call(copied: Recipe, target: float, seeds: list[int]) -> dict:
    """A :func:`run` call training ``copied`` to ``target`` test accuracy for each seed."""
    return {"fn": "time_to_accuracy", "kwargs": {"copied": copied.as_dict(), "target": target, "seeds": seeds}}


class PeerFailed(RuntimeError):
    """A peer's process died (a crash inside its framework); the message has its exit status and last words."""


def run(module: ModuleType, calls: list[dict]) -> Iterator[dict]:
    """Runs ``calls`` (:func:`measure_call`, :func:`tta_call`) of peer ``module`` in a Python process of its own:
    one framework per process, as each expects (TensorFlow and PyTorch crash when they share one: a segfault in
    the first PyTorch step after a Keras/TF one, seen with torch 2.14 and TF 2.21), and no framework's threads in
    harness's. Yields ``{"available": bool, "why": str}`` first, then per call, as each finishes, ``{"figures":
    dict}`` (None: the peer does not do that), or ``{"error": first line}``; :class:`PeerFailed` if it dies."""
    env = dict(os.environ)  # the checkout's or the wheel's harness, wherever this one came from
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(paths.PACKAGE_ROOT.parent), env.get("PYTHONPATH"))))
    request = json.dumps({"path": module.__file__, "calls": calls})
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(
            [sys.executable, "-m", "harness.peers"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
        try:
            child.stdin.write(request)
            child.stdin.close()
            for line in child.stdout:
                yield json.loads(line)
            if child.wait():
                err.seek(0)
                last = [line.strip() for line in err.read().splitlines() if line.strip()][-2:]
                raise PeerFailed(f"its process ended with status {child.returncode}: {' | '.join(last) or 'no output'}")
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()


def _answer(module: ModuleType, call: dict) -> dict | None:
    kw = call["kwargs"]
    if call["fn"] == "measure":
        return module.measure(**kw)
    if not hasattr(module, "time_to_accuracy"):
        return None
    copied = Recipe.from_dict(kw["copied"])
    return module.time_to_accuracy(copied, kw["target"], kw["seeds"])


def _serve() -> None:
    """The peer's process (``python -m harness.peers``): a request on stdin, one JSON line per answer on the
    original stdout; everything else the frameworks print (on either stream) goes to stderr."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    request = json.load(sys.stdin)
    module = _load(Path(request["path"]))
    ok, why = module.available()
    print(json.dumps({"available": ok, "why": why}), file=answers)
    for call in request["calls"] if ok else ():
        try:
            reply = {"figures": _answer(module, call)}
        except Exception as e:  # one failed point is reported; the next is still measured
            reply = {"error": (f"{type(e).__name__}: {e}".strip().splitlines() or ["?"])[0]}
        print(json.dumps(reply), file=answers)


if __name__ == "__main__":
    _serve()
