"""build(config, devices) -> Run: the one setup of train, bench, eval/predict, report and the tests."""

import jax
import numpy as np
import pytest

from harness import config as config_lib
from harness import runtime
from harness.build import build, place_data, saved_config
from harness.data.datasets import Split
from harness.errors import ConfigError


def _config(**overrides):
    c = config_lib.base_config()
    c.update(model="mlp_tiny", **overrides)
    return c


def test_a_run_without_data_has_its_plan_and_its_state_on_host_and_on_the_devices():
    run = build(_config(parallel="jit"), runtime.select_devices(2))
    assert (run.plan.strategy, run.plan.num_devices, run.plan.family) == ("jit", 2, "mlp")
    assert (run.par.kind, run.par.num_devices, run.steps_per_dispatch) == ("jit", 2, run.plan.steps_per_dispatch)
    assert all(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(run.host_state))
    placed = jax.tree.leaves(run.state)
    assert {d for leaf in placed for d in leaf.devices()} == set(runtime.select_devices(2))
    for a, b in zip(jax.tree.leaves(run.par.unreplicate(run.state)), jax.tree.leaves(run.host_state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (run.train, run.test, run.num_train, run.num_test) == (None, None, 0, 0)


def test_the_devices_default_to_the_configs_count_and_the_config_is_checked():
    assert build(_config(num_devices=4)).par.num_devices == 4
    with pytest.raises(ConfigError, match="divisible by the device count"):
        build(_config(batch_size=100), runtime.select_devices(8))


def test_an_already_resolved_plan_is_taken_as_it_is(monkeypatch):
    config, devices = _config(), runtime.select_devices(1)
    plan = build(config, devices).plan
    monkeypatch.setattr(config_lib, "validate", lambda *args: pytest.fail("validated twice"))
    assert build(config, devices, plan=plan).plan is plan


def test_data_is_placed_apart_and_only_the_splits_given():
    run = build(_config(), runtime.select_devices(8))
    labels = np.arange(20, dtype=np.int32) % 10
    test = Split(np.zeros((20, 28, 28, 1), np.uint8), labels)
    place_data(run, test=test)
    assert (run.train, run.num_train, run.num_test) == (None, 0, 20)
    np.testing.assert_array_equal(run.par.unreplicate(run.test)["label"], labels)


def test_a_saved_config_takes_todays_defaults_for_keys_it_lacks():
    saved = {"model": "mlp", "mlp_hidden": [64, 32], "batch_size": 32}  # as JSON has it, without later keys
    c = saved_config(saved, parallel="jit")
    assert (c.model, c.mlp_hidden, c.batch_size, c.parallel) == ("mlp", (64, 32), 32, "jit")
    assert (c.conv, c.micro_batches, c.steps_per_dispatch) == ("auto", 0, 0)
    assert build(c, runtime.select_devices(1)).plan.family == "mlp"
