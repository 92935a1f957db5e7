import jax
import numpy as np
import pytest

from harness import parallel, runtime
from harness.data import batches


def test_every_example_exactly_once_per_epoch_with_padding():
    n, bs = 1000, 128
    spe = batches.steps_per_epoch(n, bs)
    assert spe == 8
    epoch = np.concatenate([batches.batch_indices(3, 1, s, bs, n) for s in range(spe)])
    real = epoch[epoch != batches.PAD]
    assert len(epoch) == spe * bs and np.array_equal(np.sort(real), np.arange(n))
    assert np.all(epoch[n:] == batches.PAD)  # only the tail of the last batch is padding


def test_order_is_a_pure_function_of_seed_epoch_step():
    a = batches.batch_indices(0, 0, 2, 64, 500)
    np.testing.assert_array_equal(a, batches.batch_indices(0, 0, 2, 64, 500))
    assert not np.array_equal(a, batches.batch_indices(0, 1, 2, 64, 500))
    assert not np.array_equal(a, batches.batch_indices(1, 0, 2, 64, 500))
    with pytest.raises(IndexError):
        batches.batch_indices(0, 0, 8, 64, 500)


@pytest.mark.parametrize("kind", ["pmap", "jit"])
def test_same_global_batch_on_1_and_8_devices(kind):
    idx = batches.batch_indices(5, 2, 1, 64, 300)
    for n in (1, 8):
        par = parallel.Parallel(kind, runtime.select_devices(n), None, None)
        placed = par.shard_indices(idx)
        np.testing.assert_array_equal(np.asarray(placed).reshape(-1), idx)
        assert len({s.device for s in placed.addressable_shards}) == n


def test_eval_indices_cover_the_split_in_order():
    got = np.concatenate([batches.eval_indices(s, 32, 70) for s in range(batches.steps_per_epoch(70, 32))])
    np.testing.assert_array_equal(got[:70], np.arange(70))
    assert np.all(got[70:] == batches.PAD)


def test_gather_masks_padding():
    data = {"image": np.arange(5 * 28 * 28).reshape(5, 28, 28, 1) % 255, "label": np.arange(5, dtype=np.int32)}
    b = jax.jit(batches.gather)(data, np.array([4, 0, -1, -1], np.int32))
    np.testing.assert_array_equal(b["weight"], [1, 1, 0, 0])
    np.testing.assert_array_equal(b["label"][:2], [4, 0])
