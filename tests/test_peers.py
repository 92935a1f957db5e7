"""The peers' recipe (what they train to copy a config), its schedules against harness's optax ones, `bench tta
--peers`, and the Keras peer training it (those tests skip without keras/tensorflow: the `[peers]` extra)."""

import argparse
import math
from pathlib import Path

import numpy as np
import pytest

from harness import bench_cli, ledger, models, peers, steps
from harness import config as config_lib

EVERYTHING_ON = [
    *("norm=batch", "dropout=0.25", "augment_translate=2", "augment_flip=auto", "augment_cutout=8"),
    *("label_smoothing=0.1", "ema_decay=0.9", "optimizer=sgd", "momentum=0.9", "nesterov=true"),
    *("schedule=one_cycle", "warmup_fraction=0.3", "eval_flip=true", "cnn_channels=8,16", "cnn_dense=24"),
]


def _peer(name: str):
    return next(m for m in peers.modules() if name == m.NAME)


def test_every_config_key_is_copied_or_a_run_setting():
    keys, copied, run = set(config_lib.base_config().keys()), set(peers.COPIED_KEYS), set(peers.RUN_KEYS)
    assert not copied & run
    assert keys == copied | run, f"classify in harness/peers.py: {sorted(keys ^ (copied | run))}"


def test_the_default_recipe_is_the_shipped_cnn():
    r = peers.recipe()
    c = config_lib.load("fashion_mnist_cnn")
    assert (r.model, r.channels, r.dense, r.hidden, r.classes) == ("cnn", (32, 64), 256, (), 10)
    assert r.params == models.param_count(models.create(c)) == 824458
    assert (r.optimizer, r.schedule.name, r.schedule.peak, r.batch_size, r.num_epochs) == (
        "adam",
        "constant",
        1e-3,
        128,
        10,
    )
    assert (r.momentum, r.weight_decay, r.adam_epsilon) == (0.0, 0.0, 1e-8)
    assert not (r.batch_norm or r.dropout or r.translate or r.flip or r.cutout or r.label_smoothing or r.ema_decay)
    assert peers.recipe(config_lib.load("default")) == r


def test_the_recipe_follows_every_option_of_the_config():
    r = peers.recipe(config_lib.load("fashion_mnist_cnn", EVERYTHING_ON))
    assert (r.channels, r.dense, r.batch_norm, r.dropout) == ((8, 16), 24, True, 0.25)
    assert (r.bn_momentum, r.bn_epsilon) == (models.BN_MOMENTUM, models.BN_EPSILON)
    assert (r.translate, r.flip, r.cutout, r.label_smoothing, r.ema_decay, r.eval_flip) == (2, True, 8, 0.1, 0.9, True)
    assert (r.optimizer, r.momentum, r.nesterov) == ("sgd", 0.9, True)
    assert r.schedule == peers.Schedule("one_cycle", 1e-3, 0.3, 10)
    digits = peers.recipe(config_lib.load("fashion_mnist_cnn", [*EVERYTHING_ON, "dataset=mnist"]))
    assert not digits.flip  # augment_flip=auto mirrors clothes only
    assert r.as_dict()["schedule"]["name"] == "one_cycle"


def test_the_recipe_reads_widths_from_the_model_harness_builds():
    mlp = peers.recipe(config_lib.load("fashion_mnist_mlp", ["mlp_hidden=256,128", "width=2"]))
    assert (mlp.model, mlp.hidden, mlp.channels) == ("mlp", (512, 256), ())
    assert mlp.params == 784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10
    assert (mlp.schedule.name, mlp.schedule.warmup_fraction, mlp.num_epochs) == ("warmup_cosine", 0.05, 20)
    tiny = peers.recipe(config_lib.load("fashion_mnist_cnn", ["model=cnn_tiny", "width=3"]))
    assert (tiny.channels, tiny.dense) == ((12, 24), 48)
    adamw = peers.recipe(config_lib.load("fashion_mnist_cnn", ["optimizer=adamw", "weight_decay=0.05"]))
    assert (adamw.weight_decay, adamw.momentum) == (0.05, 0.0)


@pytest.mark.parametrize(
    "override, why",
    [
        ("dtype=bfloat16", "config.dtype=bfloat16: the peers train in float32 only"),
        ("init_from=runs/x", "the peers train from scratch"),
        ("model=resnet", "config.model=resnet: not a harness model"),
    ],
)
def test_configs_the_peers_cannot_train_are_refused(override, why):
    with pytest.raises(peers.CannotFollow, match=why):
        peers.recipe(config_lib.load("fashion_mnist_cnn", [override]))


SCHEDULED = [
    ["schedule=constant"],
    ["schedule=warmup_cosine", "warmup_fraction=0.11"],  # 15.51 warmup steps: round(), not int()
    ["schedule=warmup_cosine", "warmup_fraction=0.0"],
    ["schedule=warmup_linear", "warmup_fraction=0.25"],
    ["schedule=one_cycle", "warmup_fraction=0.33"],  # 46.53 steps up: int(), as optax
]


def _checked_steps(warmup: int, total: int) -> list[int]:
    return sorted({0, 1, max(warmup - 1, 0), warmup, warmup + 1, total // 2, total - 1, total, total + 7})


@pytest.mark.parametrize("overrides", SCHEDULED, ids=lambda o: "/".join(o))
def test_the_schedule_is_harness_optax_schedule(overrides):
    c = config_lib.load("fashion_mnist_cnn", ["num_epochs=3", *overrides])
    spe = 47
    schedule = peers.recipe(c).schedule
    expected = steps.learning_rate(c, spe)
    at = _checked_steps(*schedule.steps(spe))
    want = [float(expected(s)) if callable(expected) else expected for s in at]
    np.testing.assert_allclose(schedule.at(np.array(at, np.float64), spe), want, rtol=1e-5, atol=1e-6 * schedule.peak)


def test_the_keras_peer_states_what_it_cannot_copy():
    differences = _peer("keras3-tensorflow").differences
    plain = differences(peers.recipe())
    assert len(plain) == 2 and "initial weights, data order)" in plain[0] and "Adam's epsilon" in plain[1]
    every = " ".join(differences(peers.recipe(config_lib.load("fashion_mnist_cnn", EVERYTHING_ON))))
    assert "augmentation, dropout masks" in every and "SGD momentum" in every and "EMA" in every
    constant_sgd = differences(peers.recipe(config_lib.load("fashion_mnist_cnn", ["optimizer=sgd"])))
    assert len(constant_sgd) == 1  # momentum at a constant learning rate is the same in both


TRAINS = """
NAME = "fake-trains"


def available():
    return True, ""


def time_to_accuracy(recipe, target, seeds):
    runs = [{"seed": s, "seconds": 10.0 + s, "epochs": 3, "accuracy": 0.905} for s in seeds]
    figures = {"seeds": 2, "reached": 2, "median_seconds": 10.5, "min_seconds": 10.0, "max_seconds": 11.0}
    return {**figures, "runs": runs, "differences": ["one thing"], "recipe": recipe.as_dict(), "target": target}
"""
TIMES_ONLY = 'NAME = "fake-times-only"\n\n\ndef available():\n    return True, ""\n'


def test_bench_tta_peers_train_the_config_being_timed(monkeypatch, capsys, tmp_path):
    """`harness bench tta --peers`: a peer that trains gets the recipe of the config and overrides (in its own
    process), its row goes to the ledger with the overrides and its stated differences; a peer without a race, or
    a config no peer can train, is skipped with the reason."""
    (tmp_path / "a_trains.py").write_text(TRAINS)
    (tmp_path / "b_times_only.py").write_text(TIMES_ONLY)
    monkeypatch.setattr(peers, "PEERS_DIR", tmp_path)
    args = argparse.Namespace(config="fashion_mnist_mlp", target=0.9, seeds="0,1")
    rows = bench_cli._peer_tta_rows(args, ["dropout=0.2"])
    copied = peers.recipe(config_lib.load("fashion_mnist_mlp", ["dropout=0.2"]))
    assert len(rows) == 1 and peers.Recipe.from_dict(rows[0]["figures"]["recipe"]) == copied
    assert [r["seed"] for r in rows[0]["figures"]["runs"]] == [0, 1] and rows[0]["figures"]["target"] == 0.9
    assert copied.model == "mlp" and copied.dropout == 0.2
    assert rows[0]["framework"] == "fake-trains" and ledger.validate(rows[0]) == []
    assert rows[0]["point"] == {
        "config": "fashion_mnist_mlp",
        "target": 0.9,
        "overrides": ["dropout=0.2"],
        "peer": "fake-trains",
    }
    assert rows[0]["figures"]["differences"] == ["one thing"]
    out = capsys.readouterr().out
    assert "differs from harness: one thing" in out and "fake-times-only: skipped" in out
    assert bench_cli._peer_tta_rows(args, ["dtype=bfloat16"]) == []
    assert "cannot train fashion_mnist_mlp: config.dtype=bfloat16" in capsys.readouterr().out
    missed = {"median_seconds": float("nan"), "seeds": 3, "reached": 0}
    assert bench_cli._median_text(missed) == "not reached by any of 3 seeds"


@pytest.mark.parametrize(
    ("name", "width", "sizes", "params"),
    [
        ("mlp", 4, {"model": "mlp", "hidden": (512,)}, 784 * 512 + 512 + 512 * 10 + 10),
        ("cnn", 2, {"model": "cnn", "channels": (64, 128), "dense": 512}, 3_291_402),
        ("cnn_tiny", 3, {"model": "cnn", "channels": (12, 24), "dense": 48}, 59_722),
    ],
)
def test_peers_time_the_model_harness_builds_at_each_width(name, width, sizes, params):
    copied = peers.scaled(name, width)
    assert {k: getattr(copied, k) for k in sizes} == sizes and copied.params == params


def test_the_peer_modules_read_the_recipe_not_literals():
    for module in peers.modules():
        assert module.recipe is peers.recipe, module.NAME
        source = Path(module.__file__).read_text()
        assert "1e-3" not in source and "batch_size=128" not in source, module.NAME
        widths = ("(784, 128)", "Conv2d(1, 32", "64, 256", "Dense(128", "Dense(256", "Conv2D(32")  # the recipe's
        assert not [w for w in widths if w in source], module.NAME


# --- the Keras peer itself (the `[peers]` extra) ---


@pytest.fixture
def keras_peer():
    peer = _peer("keras3-tensorflow")
    usable, why = peer.available()
    if not usable:
        pytest.skip(f"the Keras peer is an optional extra: {why}")
    return peer


@pytest.mark.parametrize(
    "name, overrides",
    [("fashion_mnist_cnn", EVERYTHING_ON), ("fashion_mnist_mlp", ["model=mlp_tiny"])],
    ids=["cnn-every-option", "plain-mlp"],
)
def test_keras_trains_the_recipe(keras_peer, tiny_data_dir, name, overrides):
    config = config_lib.load(name, [*overrides, f"data_dir={tiny_data_dir}", "num_epochs=1"])
    copied = peers.recipe(config)
    import keras

    net = keras_peer.compiled(copied, 8)
    assert sum(math.prod(v.shape) for v in net.trainable_variables) == copied.params
    figures = keras_peer.time_to_accuracy(copied, 0.01, [0])
    run = figures["runs"][0]
    assert figures["reached"] == 1 and run["epochs"] == 1 and 0 < run["seconds"] == figures["median_seconds"]
    assert figures["recipe"] == copied.as_dict() and figures["differences"] == keras_peer.differences(copied)
    assert figures["keras"] == keras.__version__


@pytest.mark.parametrize("overrides", SCHEDULED, ids=lambda o: "/".join(o))
def test_keras_schedule_is_harness_optax_schedule(keras_peer, overrides):
    c = config_lib.load("fashion_mnist_cnn", ["num_epochs=3", *overrides])
    spe = 47
    copied = peers.recipe(c)
    keras_lr, expected = keras_peer.learning_rate(copied, spe), steps.learning_rate(c, spe)
    for s in _checked_steps(*copied.schedule.steps(spe)):
        got = float(keras_lr(s)) if callable(keras_lr) else keras_lr
        want = float(expected(s)) if callable(expected) else expected
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6 * copied.schedule.peak), s


def test_keras_evaluates_with_the_ema_weights_and_puts_the_weights_back(keras_peer):
    copied = peers.recipe(config_lib.load("fashion_mnist_mlp", ["ema_decay=0.9", "mlp_hidden=8", "schedule=constant"]))
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 64)
    net = keras_peer.compiled(copied, 4)
    for start in range(0, 64, 16):  # not fit(), which ends by putting the average in the weights
        net.train_on_batch(images[start : start + 16], np.eye(10, dtype=np.float32)[labels[start : start + 16]])
    trained = [v.numpy() for v in net.trainable_variables]
    seen = []
    predict = net.predict
    net.predict = lambda *a, **kw: seen.append(net.trainable_variables[0].numpy()) or predict(*a, **kw)
    assert 0 <= keras_peer.accuracy(net, copied, images, labels) <= 1
    assert not np.allclose(seen[0], trained[0])  # evaluated with the average, not the weights
    assert all(np.array_equal(v.numpy(), t) for v, t in zip(net.trainable_variables, trained, strict=True))


def test_keras_translation_draws_whole_pixel_shifts_uniformly(keras_peer):
    """harness shifts by whole pixels, each of -px..px equally likely; so does the peer's translation layer."""
    import keras

    keras.utils.set_random_seed(0)
    copied = peers.recipe(config_lib.load("fashion_mnist_cnn", ["augment_translate=2"]))
    (translate,) = keras_peer._augmentation(copied)
    dot = np.zeros((3000, 28, 28, 1), np.float32)
    dot[:, 14, 14] = 255
    moved = np.asarray(translate(dot, training=True))
    assert set(np.unique(moved)) == {0.0, 255.0}  # whole pixels: nothing interpolated
    rows = np.argwhere(moved[..., 0] == 255)[:, 1] - 14
    counts = np.bincount(rows + 2, minlength=5)
    assert len(rows) == len(dot) and counts.min() > 0.8 * len(dot) / 5, counts
    assert np.array_equal(np.asarray(translate(dot[:4], training=False)), dot[:4])  # training only


def test_keras_cutout_zeroes_a_square_that_may_reach_past_the_border(keras_peer):
    import keras

    keras.utils.set_random_seed(0)
    copied = peers.recipe(config_lib.load("fashion_mnist_cnn", ["augment_cutout=8"]))
    (cutout,) = keras_peer._augmentation(copied)
    white = np.full((400, 28, 28, 1), 255, np.float32)
    cut = np.asarray(cutout(white, training=True))[..., 0] == 0
    rows, cols = cut.sum(2).max(1), cut.sum(1).max(1)  # each image's zeroed square: its height and width
    assert np.array_equal(cut.sum((1, 2)), rows * cols) and rows.max() == cols.max() == 8
    assert 0 < (rows < 8).mean() < 0.5  # squares centred near an edge are cut by it
    assert np.array_equal(np.asarray(cutout(white[:4], training=False)), white[:4])
