import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import make_images

from harness import augment, models, steps
from harness import config as config_lib


def _setup(model="mlp_tiny", optimizer="adam", lr=3e-3, **kw):
    c = config_lib.base_config()
    c.update(model=model, optimizer=optimizer, learning_rate=lr, **kw)
    tx = steps.make_optimizer(c, 10)
    graphdef, state = steps.init_state(models.create(c), tx)
    return graphdef, tx, state


def _data(n=256, seed=0):
    labels = np.random.default_rng(seed).integers(0, 10, n).astype(np.int32)
    return {"image": make_images(labels, seed), "label": labels}


def test_loss_decreases_on_mock_data():
    graphdef, tx, state = _setup()
    step = jax.jit(lambda s, d, i: steps.train_step(graphdef, tx, s, d, i))
    data, losses = _data(), []
    for _ in range(5):
        for s in range(4):
            state, sums = step(state, data, np.arange(s * 64, (s + 1) * 64, dtype=np.int32))
            losses.append(float(sums["loss"] / sums["count"]))
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])
    assert int(state.step) == 20


def test_padding_has_no_effect_on_the_update():
    graphdef, tx, state = _setup(optimizer="sgd", lr=0.1)
    data = _data(16)
    step = jax.jit(lambda s, i: steps.train_step(graphdef, tx, s, data, i))
    full, m_full = step(state, np.arange(8, dtype=np.int32))
    padded, m_pad = step(state, np.array([*range(8), -1, -1, -1, -1], np.int32))
    assert float(m_full["count"]) == float(m_pad["count"]) == 8
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(padded.params), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_eval_step_sums_and_accuracy():
    """A model that answers class 3 for every image, on 10 examples of which 3 are labelled 3 (example 0 among
    them, which the two padding indices gather and must not count)."""
    graphdef, _, state = _setup()
    bias = np.zeros(10, np.float32)
    bias[3] = 2.0

    def answer_3(path, leaf):
        return bias if jax.tree_util.keystr(path).startswith("['out']['bias']") else np.zeros_like(leaf)

    params = jax.tree_util.tree_map_with_path(answer_3, state.params)
    labels = np.array([3, 3, 3, 0, 1, 2, 4, 5, 6, 7], np.int32)
    data = {"image": make_images(labels), "label": labels}
    indices = np.array([-2, -1, *range(10)], np.int32)
    sums = jax.jit(lambda p, i: steps.eval_step(graphdef, p, data, i))(params, indices)
    assert float(sums["count"]) == 10 and float(sums["correct"]) == 3
    per_example = np.log(9 + np.exp(2.0)) - bias[labels]  # cross-entropy of the constant logits
    np.testing.assert_allclose(float(sums["loss"]), per_example.sum(), rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_optimizers_step_and_warmup_starts_at_zero(optimizer):
    data = _data(64)
    indices = np.arange(64, dtype=np.int32)
    for schedule, moves in (("constant", True), ("warmup_cosine", False)):  # warmup: the first lr is 0
        graphdef, tx, state = _setup(optimizer=optimizer, schedule=schedule, warmup_fraction=0.5)
        new, _ = jax.jit(lambda s, g=graphdef, t=tx: steps.train_step(g, t, s, data, indices))(state)
        delta = max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params), strict=True)
        )
        assert (delta > 0) == moves, (schedule, delta)


@pytest.mark.parametrize("model", ["mlp_tiny", "cnn_tiny"])
def test_micro_batches_give_the_same_step(model):
    graphdef, tx, state = _setup(model=model, optimizer="sgd", lr=0.1)
    data = _data(64)
    indices = np.array([*range(60), -1, -1, -1, -1], np.int32)  # padding inside the last slice
    one, sums_one = jax.jit(lambda s: steps.train_step(graphdef, tx, s, data, indices))(state)
    four, sums_four = jax.jit(lambda s: steps.train_step(graphdef, tx, s, data, indices, micro_batches=4))(state)
    assert float(sums_four["count"]) == float(sums_one["count"]) == 60
    np.testing.assert_allclose(sums_four["loss"], sums_one["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(four.params), jax.tree.leaves(one.params), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_micro_batch_policy():
    from harness import plan

    cpu = jax.devices("cpu")
    assert plan.micro_batches(0, cpu[:1], "cnn", 128, "slices") == 4
    assert plan.micro_batches(0, cpu[:1], "cnn", 6, "slices") == 2
    assert plan.micro_batches(0, cpu[:1], "cnn", 128, "xla") == 1
    assert plan.micro_batches(0, cpu[:1], "mlp", 128, "slices") == 1
    assert plan.micro_batches(0, cpu[:4], "cnn", 32, "slices") == 1
    assert plan.micro_batches(8, cpu[:1], "mlp", 128, "xla") == 8


# ---- issue 13: what a step does besides the plain update --------------------------------------------------------


def _regularised(model="mlp_tiny", **keys):
    c = config_lib.base_config()
    c.update(model=model, optimizer="sgd", learning_rate=0.1, **keys)
    tx = steps.make_optimizer(c, 10)
    options = steps.Options.from_config(c)
    graphdef, state = steps.init_state(models.create(c), tx, ema=options.ema_decay > 0)
    return graphdef, tx, state, options


def test_the_train_step_augments_each_example_by_seed_step_and_index():
    """The step's augmentation is exactly augment() of the gathered batch with the keys of (seed, step, index)."""
    graphdef, tx, state, options = _regularised(augment_translate=2, augment_flip="yes", augment_cutout=5, seed=7)
    state = state.replace(step=jnp.asarray(5, jnp.int32))
    data = _data(64)
    indices = np.array([3, 40, 17, 8, 63, 0, 22, 9], np.int32)
    got, _ = jax.jit(lambda s: steps.train_step(graphdef, tx, s, data, indices, options=options))(state)
    keys = augment.example_keys(7, 5, indices, augment.AUGMENT_STREAM)
    batch = {
        "image": augment.augment(data["image"][indices], keys, options.augment),
        "label": data["label"][indices],
        "weight": np.ones(8, np.float32),
    }
    want, _ = jax.jit(lambda s: steps.update(graphdef, tx, s, batch))(state)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)  # the same maths, fused differently
    plain, _ = jax.jit(lambda s: steps.train_step(graphdef, tx, s, data, indices))(state)
    assert np.max(np.abs(jax.tree.leaves(plain.params)[0] - jax.tree.leaves(got.params)[0])) > 1e-4


def test_a_host_batch_without_indices_cannot_be_augmented():
    graphdef, tx, state, options = _regularised(dropout=0.5)
    batch = {"image": _data(8)["image"], "label": _data(8)["label"], "weight": np.ones(8, np.float32)}
    with pytest.raises(ValueError, match="global example indices"):
        steps.update(graphdef, tx, state, batch, options=options)


def test_evaluation_never_augments_and_test_time_flip_averages_the_mirror():
    graphdef, _, state, _ = _regularised(augment_translate=3, augment_flip="yes", dropout=0.5)
    data = _data(32)
    indices = np.arange(32, dtype=np.int32)
    plain = steps.eval_step(graphdef, steps.inference(state), data, indices)
    logits = nnx.merge(graphdef, state.params)(data["image"])
    np.testing.assert_allclose(plain["loss"], steps._sums(logits, {**data, "weight": np.ones(32)})["loss"], rtol=1e-6)
    mirrored = nnx.merge(graphdef, state.params)(augment.flip_horizontal(data["image"]))
    probs = steps.predict_probs(graphdef, state.params, data["image"], eval_flip=True)
    np.testing.assert_allclose(probs, jax.nn.softmax((logits + mirrored) / 2), atol=1e-6)
    flipped = steps.eval_step(graphdef, state.params, data, indices, eval_flip=True)
    assert float(flipped["loss"]) != float(plain["loss"])


def test_label_smoothing_trains_on_smoothed_targets():
    logits = jax.random.normal(jax.random.key(0), (4, 10))
    batch = {"label": np.array([1, 2, 3, 4]), "weight": np.array([1, 1, 1, 0], np.float32)}
    targets = 0.9 * jax.nn.one_hot(batch["label"], 10) + 0.01
    want = -(targets * jax.nn.log_softmax(logits)).sum(-1)[:3].sum()
    np.testing.assert_allclose(steps._sums(logits, batch, 0.1)["loss"], want, rtol=1e-6)
    hard = -jax.nn.log_softmax(logits)[np.arange(4), batch["label"]][:3].sum()
    np.testing.assert_allclose(steps._sums(logits, batch)["loss"], hard, rtol=1e-6)


def test_the_ema_follows_the_parameters_and_is_what_evaluation_uses():
    graphdef, tx, state, options = _regularised(ema_decay=0.9)
    assert steps.inference(state) is state.ema
    data, indices = _data(64), np.arange(64, dtype=np.int32)
    new, _ = jax.jit(lambda s: steps.train_step(graphdef, tx, s, data, indices, options=options))(state)
    for e, p0, p1 in zip(*(jax.tree.leaves(t) for t in (new.ema, state.params, new.params)), strict=True):
        np.testing.assert_allclose(e, 0.1 * p0 + 0.9 * p1, rtol=1e-6, atol=1e-7)  # update 0's decay: 1/10
    assert steps.inference(new) is new.ema
    off = _regularised()[2]
    assert off.ema is None and off.batch_stats is None and steps.inference(off) is off.params


def _toy_trajectory(k: int, seed: int = 0) -> list[dict]:
    """k + 1 parameter pytrees p_0..p_k (float32), each an independent draw."""
    rng = np.random.default_rng(seed)
    return [{"w": rng.normal(size=3), "b": {"c": rng.normal(size=(2, 2))}} for _ in range(k + 1)]


def _ema_of(trajectory: list[dict], decay: float) -> list[dict]:
    """The EMA after each update, started at p_0, as the train step computes it (one jitted ema_update each)."""
    as32 = [jax.tree.map(lambda x: np.asarray(x, np.float32), p) for p in trajectory]
    update = jax.jit(lambda e, p, t: steps.ema_update(e, p, t, decay))
    emas = [as32[0]]
    for t, p in enumerate(as32[1:]):
        emas.append(update(emas[-1], p, jnp.asarray(t, jnp.int32)))
    return emas


def _weighted(weights: list[float], trajectory: list[dict]) -> dict:
    """Σ_m weights[m] · trajectory[m], leaf by leaf, in float64."""
    return jax.tree.map(lambda *ps: sum(w * np.float64(p) for w, p in zip(weights, ps, strict=True)), *trajectory)


def test_the_ema_after_k_updates_is_the_closed_form_of_its_warming_decay():
    """In the warm-up (decay (1+t)/(10+t) < 0.999, t < 8 990) the EMA after k updates is
    Σ_{m=0..k} C(m+8, 8) / C(k+9, 9) · p_m; the initial parameters weigh 1/C(k+9, 9)."""
    from math import comb

    trajectory = _toy_trajectory(60)
    emas = _ema_of(trajectory, 0.999)
    for k in (1, 2, 9, 30, 60):
        weights = [comb(m + 8, 8) / comb(k + 9, 9) for m in range(k + 1)]
        want = _weighted(weights, trajectory[: k + 1])
        for got, w in zip(jax.tree.leaves(emas[k]), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(got, w, rtol=2e-5, atol=2e-6)
    assert 1 / comb(60 + 9, 9) < 1e-10  # p_0 is forgotten, unlike 0.999**60 = 0.94 of a constant decay


def test_the_ema_reaches_its_constant_decay_and_then_updates_as_it_always_did():
    """Decay 0.5: d_t = min(0.5, (1+t)/(10+t)) warms up for t < 8, then stays 0.5. The EMA after k updates is
    Π_{t<k} d_t · p_0 + Σ_{m=1..k} (1 - d_{m-1}) Π_{m≤t<k} d_t · p_m (exact arithmetic, float64); past the
    warm-up one update is bitwise ``d·e + (1-d)·p`` with d a Python float, the update before the warm-up existed."""
    decay, k = 0.5, 20
    d = [min(decay, (1 + t) / (10 + t)) for t in range(k)]
    assert d[7] < decay == d[8]
    trajectory = _toy_trajectory(k, seed=1)
    weights = [float(np.prod(d))] + [(1 - d[m - 1]) * float(np.prod(d[m:])) for m in range(1, k + 1)]
    got = _ema_of(trajectory, decay)[k]
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(_weighted(weights, trajectory)), strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)
    e, p = (jax.tree.map(lambda x: np.asarray(x, np.float32), x) for x in trajectory[:2])
    before = jax.jit(lambda e, p: jax.tree.map(lambda a, b: 0.999 * a + (1.0 - 0.999) * b, e, p))(e, p)
    for t, same in ((8989, False), (8990, True), (10**6, True)):
        now = jax.jit(lambda e, p, t: steps.ema_update(e, p, t, 0.999))(e, p, jnp.asarray(t, jnp.int32))
        equal = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(now), jax.tree.leaves(before), strict=True)]
        assert all(equal) if same else not any(equal), (t, equal)


def test_batchnorm_statistics_live_in_the_state_and_refuse_micro_batches():
    graphdef, tx, state, options = _regularised(model="cnn_tiny", norm="batch")
    assert state.batch_stats is not None
    data, indices = _data(64), np.arange(64, dtype=np.int32)
    new, _ = jax.jit(lambda s: steps.train_step(graphdef, tx, s, data, indices, options=options))(state)
    pairs = zip(jax.tree.leaves(new.batch_stats), jax.tree.leaves(state.batch_stats), strict=True)
    moved = [float(np.max(np.abs(a - b))) for a, b in pairs]
    assert min(moved) > 0
    variables = steps.inference(new)
    assert len(jax.tree.leaves(variables)) == len(jax.tree.leaves(new.params)) + len(moved)
    with pytest.raises(ValueError, match="micro_batches must be 1"):
        steps.train_step(graphdef, tx, state, data, indices, micro_batches=4, options=options)


def test_micro_batches_draw_the_same_dropout_and_augmentation():
    graphdef, tx, state, options = _regularised(dropout=0.4, augment_translate=2, augment_flip="yes")
    data = _data(64)
    indices = np.array([*range(60), -1, -1, -1, -1], np.int32)
    one, _ = jax.jit(lambda s: steps.train_step(graphdef, tx, s, data, indices, options=options))(state)
    four, _ = jax.jit(lambda s: steps.train_step(graphdef, tx, s, data, indices, micro_batches=4, options=options))(
        state
    )
    for a, b in zip(jax.tree.leaves(four.params), jax.tree.leaves(one.params), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_fine_tuning_starts_from_the_trained_ema_and_statistics():
    fresh = _regularised(model="cnn_tiny", norm="batch", ema_decay=0.5)[2]
    trained = fresh.replace(
        step=jnp.asarray(9),
        ema=jax.tree.map(lambda x: x + 1, fresh.ema),
        batch_stats=jax.tree.map(lambda x: x + 2, fresh.batch_stats),
    )
    new = steps.start_from(fresh, trained)
    assert int(new.step) == 0 and new.opt_state is fresh.opt_state
    assert new.params is trained.ema and new.ema is trained.ema and new.batch_stats is trained.batch_stats


def _rates(schedule, steps_per_epoch=10, **keys):
    c = config_lib.base_config()
    c.update(schedule=schedule, learning_rate=1.0, num_epochs=2, **keys)
    lr = steps.learning_rate(c, steps_per_epoch)
    return np.array([float(lr(k)) if callable(lr) else lr for k in range(21)])


def test_schedules():
    np.testing.assert_allclose(_rates("constant"), 1.0)
    old = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=5, decay_steps=20)
    np.testing.assert_allclose(_rates("warmup_cosine", warmup_fraction=0.25), [old(k) for k in range(21)])
    linear = _rates("warmup_linear", warmup_fraction=0.25)  # 0 → 1 over 5 steps, then 1 → 0 over 15
    np.testing.assert_allclose(linear[:6], np.arange(6) / 5, atol=1e-6)
    np.testing.assert_allclose(linear[5:], 1 - np.arange(16) / 15, atol=1e-6)
    cycle = _rates("one_cycle", warmup_fraction=0.25)  # up from 1/25 to 1 at step 5, down to 1/250 000 at 20
    assert cycle[0] == pytest.approx(1 / 25) and cycle[5] == pytest.approx(1.0) and cycle.argmax() == 5
    assert cycle[20] == pytest.approx(1 / 25 / 1e4) and np.all(np.diff(cycle[5:]) < 0)


def test_nesterov_momentum_is_optax_nesterov():
    data, indices = _data(64), np.arange(64, dtype=np.int32)

    def three_steps(graphdef, tx, state):
        step = jax.jit(lambda s: steps.train_step(graphdef, tx, s, data, indices))
        for _ in range(3):
            state, _ = step(state)
        return jax.tree.leaves(state.params)

    graphdef, tx, state, _ = _regularised(nesterov=True)
    ours = three_steps(graphdef, tx, state)
    theirs = three_steps(graphdef, optax.sgd(0.1, momentum=0.9, nesterov=True), state)
    plain = three_steps(*_regularised()[:3])
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(ours[0], plain[0])
