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
