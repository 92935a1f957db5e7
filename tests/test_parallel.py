"""pmap, jit-sharding and shard_map on 8 devices and a single device must give the same parameters.

This is the guard against the gradient-scale trap (DESIGN.md §4): a wrong collective makes the 8-device
parameters drift away from the single-device ones after the first step.
"""

import jax
import numpy as np
import pytest
from helpers import make_images

from harness import config as config_lib
from harness import models, parallel, runtime, steps
from harness.data import batches
from harness.errors import ConfigError

N, BATCH, STEPS = 300, 64, 6  # 300 examples: step 4 of each epoch is a padded batch


def _train(kind, num_devices, model, optimizer="adam", **keys):
    c = config_lib.base_config()
    c.update(model=model, optimizer=optimizer, learning_rate=3e-3, **keys)
    tx = steps.make_optimizer(c, batches.steps_per_epoch(N, BATCH))
    options = steps.Options.from_config(c)
    graphdef, state = steps.init_state(models.create(c), tx, ema=options.ema_decay > 0)
    par = parallel.Parallel(kind, runtime.select_devices(num_devices), graphdef, tx, options=options)
    labels = np.random.default_rng(1).integers(0, 10, N).astype(np.int32)
    data = par.replicate({"image": make_images(labels), "label": labels})
    state, losses = par.replicate(state), []
    for i in range(STEPS):
        epoch, s = divmod(i, batches.steps_per_epoch(N, BATCH))
        state, sums = par.train_step(state, data, par.shard_indices(batches.batch_indices(0, epoch, s, BATCH, N)))
        losses.append(par.metrics_to_host(sums)["loss"])
    indices = par.shard_indices(batches.eval_indices(4, BATCH, N))
    ev = par.metrics_to_host(par.eval_step(steps.inference(state), data, indices))
    return par.unreplicate(state), losses, ev, par


@pytest.mark.parametrize(("model", "optimizer"), [("mlp_tiny", "sgd"), ("cnn_tiny", "adam")])
def test_pmap8_jit8_and_one_device_agree(model, optimizer):
    ref, ref_losses, ref_eval, _ = _train("jit", 1, model, optimizer)
    for kind in parallel.STRATEGIES:
        got, losses, ev, _ = _train(kind, 8, model, optimizer)
        assert int(got.step) == STEPS
        for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(ref.params), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=f"{kind} on 8 devices")
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
        assert ev["count"] == ref_eval["count"] == N - 4 * BATCH
        np.testing.assert_allclose(ev["loss"], ref_eval["loss"], rtol=1e-5)


# Everything of issue 13 at once: BatchNorm over the global batch (the padded step 4 included), dropout keyed by the
# example, augmentation, label smoothing, the EMA and test-time flips.
REGULARISED = dict(
    norm="batch",
    dropout=0.3,
    augment_translate=2,
    augment_flip="yes",
    augment_cutout=6,
    label_smoothing=0.1,
    ema_decay=0.8,
    eval_flip=True,
)


def test_batchnorm_dropout_ema_and_augmentation_agree_on_pmap8_jit8_and_one_device():
    ref, ref_losses, ref_eval, _ = _train("jit", 1, "cnn_tiny", **REGULARISED)
    assert ref.batch_stats is not None and ref.ema is not None
    plain = _train("jit", 1, "cnn_tiny")[0]
    assert not np.allclose(jax.tree.leaves(plain.params)[0], jax.tree.leaves(ref.params)[0])  # the options act
    for kind in parallel.STRATEGIES:
        got, losses, ev, _ = _train(kind, 8, "cnn_tiny", **REGULARISED)
        for part in ("params", "batch_stats", "ema", "opt_state"):
            for a, b in zip(jax.tree.leaves(getattr(got, part)), jax.tree.leaves(getattr(ref, part)), strict=True):
                np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5, err_msg=f"{part}: {kind} on 8 devices")
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
        assert ev["count"] == ref_eval["count"] == N - 4 * BATCH
        np.testing.assert_allclose([ev["loss"], ev["correct"]], [ref_eval["loss"], ref_eval["correct"]], rtol=1e-5)


def test_params_actually_moved():
    before = _train("jit", 1, "mlp_tiny")[0]
    c = config_lib.base_config()
    c.model = "mlp_tiny"
    init = nnx_params(models.create(c))
    moved = [float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(before.params), init, strict=True)]
    assert min(moved) > 1e-4  # the agreement test above would be empty if nothing trained


def nnx_params(model):
    from flax import nnx

    return jax.tree.leaves(nnx.state(model, nnx.Param))


@pytest.mark.parametrize("kind", parallel.STRATEGIES)
def test_each_step_function_traces_once(kind):
    *_, par = _train(kind, 8, "mlp_tiny")
    assert dict(par.traces) == {"train": 1, "eval": 1}


def test_pmap_state_is_unreplicated_to_one_host_copy():
    state, *_ = _train("pmap", 8, "mlp_tiny")
    leaves = jax.tree.leaves(state.params)
    assert all(isinstance(leaf, np.ndarray) for leaf in leaves)
    assert sorted(leaf.shape for leaf in leaves) == [(10,), (16,), (16, 10), (784, 16)]


def test_unknown_strategy():
    with pytest.raises(ConfigError, match=r"allowed: pmap, jit, shard_map$"):
        parallel.Parallel("dp", runtime.select_devices(1), None, None)


@pytest.mark.parametrize("kind", parallel.STRATEGIES)
def test_several_steps_per_dispatch_and_host_batches_match_single_steps(kind):
    c = config_lib.base_config()
    c.update(model="mlp_tiny", optimizer="sgd", learning_rate=0.1)
    tx = steps.make_optimizer(c, 4)
    graphdef, state = steps.init_state(models.create(c), tx)
    par = parallel.Parallel(kind, runtime.select_devices(8), graphdef, tx)
    labels = np.random.default_rng(2).integers(0, 10, N).astype(np.int32)
    host = {"image": make_images(labels), "label": labels}
    data = par.replicate(host)
    order = np.stack([batches.batch_indices(0, 0, s, BATCH, N) for s in range(3)])  # [3, 64], no padding
    state = jax.device_get(state)  # host copy: each replicate() below must own its (donated) buffers
    one, fused, hosted = par.replicate(state), par.replicate(state), par.replicate(state)
    for s in range(3):
        one, _ = par.train_step(one, data, par.shard_indices(order[s]))
        batch = {"image": host["image"][order[s]], "label": labels[order[s]], "weight": np.ones(BATCH, np.float32)}
        hosted, _ = par.train_batch(hosted, par.shard_batch(batch))
    fused, sums = par.train_steps(fused, data, par.shard_indices(order))
    assert par.metrics_to_host(sums)["count"] == 3 * BATCH
    for other in (fused, hosted):
        other = par.unreplicate(other)
        assert int(other.step) == 3
        for a, b in zip(jax.tree.leaves(other.params), jax.tree.leaves(par.unreplicate(one).params), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("kind", parallel.STRATEGIES)
def test_predict_pads_the_images_to_the_devices_and_matches_the_model_on_the_host(kind):
    c = config_lib.base_config()
    c.model = "mlp_tiny"
    graphdef, state = steps.init_state(models.create(c), steps.make_optimizer(c, 1))
    par = parallel.Parallel(kind, runtime.select_devices(8), graphdef, None)
    images = make_images(np.arange(13) % 10)  # 13 = 8 + 5: three padded rows
    got = par.predict(par.replicate(jax.device_get(state.params)), images)
    assert got.shape == (13, 10)
    np.testing.assert_allclose(got, steps.predict_probs(graphdef, state.params, images), atol=1e-6)


@pytest.mark.parametrize("kind", parallel.STRATEGIES)
def test_generate_lays_data_made_on_the_devices_out_as_replicate_does(kind):
    par = parallel.Parallel(kind, runtime.select_devices(8), None, None)

    def make():
        return {"image": jax.numpy.arange(12, dtype=np.uint8).reshape(6, 2), "label": jax.numpy.ones(6, np.int32)}

    made, placed = par.generate(make), par.replicate(jax.device_get(make()))
    for a, b in zip(jax.tree.leaves(made), jax.tree.leaves(placed), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype and a.sharding.is_equivalent_to(b.sharding, a.ndim)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert {s.device for s in a.addressable_shards} == set(par.devices)
