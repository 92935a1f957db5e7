import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from harness import config as config_lib
from harness import models


def _config(model, **kw):
    c = config_lib.base_config()
    c.model = model
    c.update(kw)
    return c


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("mlp", 784 * 128 + 128 + 128 * 10 + 10),  # 101 770
        ("cnn", (9 * 32 + 32) + (9 * 32 * 64 + 64) + (3136 * 256 + 256) + (256 * 10 + 10)),  # 824 458
    ],
)
def test_exact_parameter_counts(name, count):
    assert models.param_count(models.create(_config(name))) == count


def test_mlp_hidden_sizes_configurable():
    m = models.create(_config("mlp", mlp_hidden=(256, 64)))
    assert models.param_count(m) == 784 * 256 + 256 + 256 * 64 + 64 + 64 * 10 + 10


def _cnn_count(c1: int, c2: int, dense: int) -> int:
    """Parameters of the CNN: two 3×3 convolutions, a dense layer on the 7×7×c2 map, the 10-way output."""
    return (9 * c1 + c1) + (9 * c1 * c2 + c2) + (49 * c2 * dense + dense) + (dense * 10 + 10)


@pytest.mark.parametrize(
    ("name", "keys", "count"),
    [
        ("cnn", {"cnn_channels": (8, 16), "cnn_dense": 32}, _cnn_count(8, 16, 32)),
        ("cnn", {"width": 2}, _cnn_count(64, 128, 512)),
        ("cnn", {"cnn_channels": (8, 16), "cnn_dense": 32, "width": 3}, _cnn_count(24, 48, 96)),
        ("mlp", {"width": 4}, 784 * 512 + 512 + 512 * 10 + 10),
        ("mlp", {"mlp_hidden": (256, 64), "width": 2}, 784 * 512 + 512 + 512 * 128 + 128 + 128 * 10 + 10),
        ("mlp_tiny", {"width": 2}, 784 * 32 + 32 + 32 * 10 + 10),
        ("cnn_tiny", {"width": 2}, _cnn_count(8, 16, 32)),
        ("cnn_tiny", {"cnn_channels": (99, 99), "cnn_dense": 99}, _cnn_count(4, 8, 16)),  # the tiny sizes are fixed
    ],
)
def test_width_keys_change_parameter_counts_exactly(name, keys, count):
    abstract = nnx.eval_shape(lambda: models.create(_config(name, **keys)))  # shapes only: nothing initialised
    assert models.param_count(abstract) == count


@pytest.mark.parametrize("conv", ["xla", "slices"])
def test_default_width_keys_build_the_cnn_they_always_built(conv):
    """The width keys at their defaults give the CNN class's own defaults: the same parameters, bit for bit."""
    c = config_lib.base_config()
    assert (c.cnn_channels, c.cnn_dense, c.width, c.mlp_hidden) == ((32, 64), 256, 1, (128,))
    built = nnx.state(models.create(_config("cnn"), conv), nnx.Param)
    plain = nnx.state(models.CNN(dtype=jnp.float32, conv=conv, rngs=nnx.Rngs(0)), nnx.Param)
    assert jax.tree.structure(built) == jax.tree.structure(plain)
    for a, b in zip(jax.tree.leaves(built), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", list(models.MODELS))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_shapes_dtypes(name, dtype):
    m = models.create(_config(name, dtype=dtype))
    logits = m(np.zeros((3, 28, 28, 1), np.uint8))
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(m, nnx.Param)))


def test_same_seed_same_init_and_uint8_scaling():
    a, b = models.create(_config("cnn_tiny")), models.create(_config("cnn_tiny"))
    x = np.full((2, 28, 28, 1), 255, np.uint8)
    np.testing.assert_array_equal(a(x), b(x))
    np.testing.assert_allclose(a(x), a(np.ones((2, 28, 28, 1), np.float32)), rtol=1e-6)


@pytest.mark.parametrize(
    ("kernel", "dtype", "tol"), [(3, "float32", 1e-5), (5, "float32", 1e-5), (3, "bfloat16", 5e-2)]
)
def test_slices_convolution_matches_nnx_conv_forward_and_gradients(kernel, dtype, tol):
    conv = nnx.Conv(6, 5, kernel_size=(kernel, kernel), dtype=jnp.dtype(dtype), rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(0), (3, 9, 9, 6))
    k, b = conv.kernel[...], conv.bias[...]
    graphdef, state = nnx.split(conv)

    def ref(x, k, b):  # nnx.Conv itself, with the kernel and bias as inputs (functional form)
        params = jax.tree.map(lambda v: v, state)
        nnx.replace_by_pure_dict(params, {"kernel": k, "bias": b})
        return nnx.merge(graphdef, params)(x).astype(jnp.float32)

    def ours(x, k, b):
        return models.conv_same_slices(x, k, b, jnp.dtype(dtype)).astype(jnp.float32)

    np.testing.assert_allclose(ours(x, k, b), ref(x, k, b), atol=tol, rtol=tol)
    loss = lambda f: lambda x, k, b: jnp.sum(jnp.sin(f(x, k, b)))  # noqa: E731
    for g_ours, g_ref in zip(
        jax.grad(loss(ours), (0, 1, 2))(x, k, b), jax.grad(loss(ref), (0, 1, 2))(x, k, b), strict=True
    ):
        np.testing.assert_allclose(g_ours, g_ref, atol=tol * 10, rtol=tol * 10)


def test_cnn_with_either_convolution_is_the_same_model():
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    a, b = models.create(_config("cnn"), "xla"), models.create(_config("cnn"), "slices")
    assert models.param_count(a) == models.param_count(b)
    np.testing.assert_allclose(a(x), b(x), atol=1e-4)


def test_conv_choice_per_platform():
    from harness import plan

    cpu = jax.devices("cpu")
    assert plan.conv_impl("auto", cpu[:1]) == "slices" and plan.conv_impl("auto", cpu[:4]) == "xla"
    assert plan.conv_impl("xla", cpu[:1]) == "xla"

    class FakeGpu:
        platform = "gpu"

    assert plan.conv_impl("auto", [FakeGpu()]) == "xla"


# ---- BatchNorm and dropout (issue 13) ---------------------------------------------------------------------------


def test_batchnorm_normalises_by_the_unpadded_batch_updates_its_running_statistics_and_evaluates_with_them():
    bn = models.BatchNorm(3)
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (8, 4, 4, 3)).astype(np.float32)
    x[6:] = 1e6  # padding: must not count
    weight = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)
    out = np.asarray(bn(x, models.Training(weight)))
    real = x[:6]
    mean, var = real.mean((0, 1, 2)), real.var((0, 1, 2))
    np.testing.assert_allclose(out[:6], (real - mean) / np.sqrt(var + models.BN_EPSILON), atol=1e-4)
    m = models.BN_MOMENTUM
    np.testing.assert_allclose(bn.mean[...], (1 - m) * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.var[...], m + (1 - m) * var, rtol=1e-5)
    np.testing.assert_allclose(bn(real), (real - bn.mean[...]) / np.sqrt(bn.var[...] + models.BN_EPSILON), atol=1e-4)
    np.testing.assert_allclose(bn.mean[...], (1 - m) * mean, rtol=1e-5)  # evaluation changes nothing


def test_a_batchnorm_cnn_trades_the_convolution_biases_for_scale_shift_and_statistics():
    abstract = nnx.eval_shape(lambda: models.create(_config("cnn", norm="batch")))
    convs = 9 * 32 + 9 * 32 * 64  # no biases: BatchNorm's shift does that job
    assert models.param_count(abstract) == convs + (3136 * 256 + 256) + (256 * 10 + 10) + 2 * (32 + 64)
    assert sum(v.size for v in jax.tree.leaves(nnx.state(abstract, nnx.BatchStat))) == 2 * (32 + 64)
    plain = models.create(_config("cnn"))
    assert not jax.tree.leaves(nnx.state(plain, nnx.BatchStat)) and plain.norm1 is None


def test_a_batchnorm_cnn_is_the_same_model_with_either_convolution():
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    a, b = (models.create(_config("cnn_tiny", norm="batch"), conv) for conv in ("xla", "slices"))
    train = models.Training(np.ones(4, np.float32))
    np.testing.assert_allclose(a(x, train), b(x, train), atol=1e-4)
    np.testing.assert_allclose(a(x), b(x), atol=1e-4)  # running statistics, updated alike


def test_dropout_drops_at_its_rate_scales_the_rest_and_only_in_training():
    x = np.ones((64, 100), np.float32)
    keys = jax.random.split(jax.random.key(0), 64)
    out = np.asarray(models.dropout(x, 0.25, models.Training(np.ones(64), keys=keys), 0))
    assert set(np.unique(out)) == {0.0, np.float32(1 / 0.75)}
    assert 0.2 < np.mean(out == 0) < 0.3
    again = models.dropout(x, 0.25, models.Training(np.ones(64), keys=keys), 0)
    np.testing.assert_array_equal(out, again)  # the keys decide
    other_layer = models.dropout(x, 0.25, models.Training(np.ones(64), keys=keys), 1)
    assert not np.array_equal(out, other_layer)
    assert models.dropout(x, 0.25, None, 0) is x
    assert models.dropout(x, 0.25, models.Training(np.ones(64)), 0) is x  # no keys: nothing drawn
    assert models.dropout(x, 0.0, models.Training(np.ones(64), keys=keys), 0) is x


@pytest.mark.parametrize("name", ["mlp_tiny", "cnn_tiny"])
def test_models_with_dropout_evaluate_deterministically_and_train_with_masks(name):
    m = models.create(_config(name, dropout=0.5))
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    np.testing.assert_array_equal(m(x), models.create(_config(name))(x))  # evaluation: no dropout
    train = models.Training(np.ones(4, np.float32), keys=jax.random.split(jax.random.key(1), 4))
    assert not np.allclose(m(x, train), m(x))


def test_an_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="norm='layer': allowed: none, batch"):
        models.CNN(norm="layer", rngs=nnx.Rngs(0))


def test_max_pooling_keeps_the_parameters_and_takes_each_window_maximum():
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    c = _config("cnn")
    avg = models.create(c)
    c.cnn_pool = "max"
    peak = models.create(c)
    assert models.param_count(peak) == models.param_count(avg) == 824_458
    h = np.asarray(nnx.relu(peak.conv1(models._scale(x, jnp.float32))))
    block = np.asarray(peak._block(peak.conv1, None, models._scale(x, jnp.float32), None))
    np.testing.assert_allclose(block, h.reshape(4, 14, 2, 14, 2, -1).max(axis=(2, 4)), rtol=1e-6)
    np.testing.assert_array_equal(block, nnx.max_pool(h, window_shape=(2, 2), strides=(2, 2)))
    assert not np.allclose(peak(x), avg(x))  # the same parameters (same seed), another model
    with pytest.raises(ValueError, match="pool='min': allowed: avg, max"):
        models.CNN(pool="min", rngs=nnx.Rngs(0))


def test_max_pool_2x2_has_nnx_max_pools_values_and_gradients():
    x = jax.random.normal(jax.random.key(0), (2, 28, 28, 8))

    def ref(v):
        return nnx.max_pool(v, window_shape=(2, 2), strides=(2, 2))

    np.testing.assert_array_equal(models.max_pool_2x2(x), ref(x))
    w = jax.random.normal(jax.random.key(1), (2, 14, 14, 8))
    grads = [jax.grad(lambda v, f=f: (f(v) * w).sum())(x) for f in (models.max_pool_2x2, ref)]
    np.testing.assert_array_equal(*grads)
