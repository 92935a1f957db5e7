import jax
import numpy as np
import pytest
from helpers import make_images

from harness import config as config_lib
from harness import models, steps


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
