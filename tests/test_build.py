"""build(config, devices) -> Run: the one setup of train, bench, eval/predict, report and the tests."""

import jax
import numpy as np
import pytest

from harness import config as config_lib
from harness import runtime
from harness.build import build, place_data, saved_config, state_bytes
from harness.data.datasets import Split
from harness.errors import ConfigError, OutOfMemoryError


def _config(**overrides):
    c = config_lib.base_config()
    c.update({"model": "mlp_tiny", **overrides})
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


def test_the_state_size_is_known_before_anything_is_allocated():
    """``state_bytes`` from shapes alone equals the bytes of the state ``build`` makes (with BatchNorm and EMA)."""
    from harness import steps

    config = _config(model="cnn_tiny", norm="batch", ema_decay=0.9)
    run = build(config, runtime.select_devices(1))
    made = sum(leaf.nbytes for leaf in jax.tree.leaves(run.host_state))
    assert state_bytes(config, run.plan, steps.make_optimizer(config, 1), ema=True) == made


def test_a_model_too_wide_for_memory_stops_before_it_is_made(monkeypatch):
    """A width whose train state cannot fit in a device's free memory is one line naming config.width, raised
    before any state is allocated (the state is only ever made abstractly, from shapes)."""
    from harness import build as build_lib
    from harness import steps

    made, init_state = [], steps.init_state

    def recording(model, *args, **kw):
        graphdef, state = init_state(model, *args, **kw)
        made.append(all(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(state.params)))
        return graphdef, state

    monkeypatch.setattr(runtime, "available_bytes", lambda devices: 64 * 2**20)  # 64 MiB free per device
    monkeypatch.setattr(build_lib.steps, "init_state", recording)
    config = _config(model="mlp", width=64)  # 784 × 8192 + 8192 × 10 ≈ 6.5 M parameters, × 3 with Adam's moments
    with pytest.raises(
        OutOfMemoryError,
        match=r"config.width=64: the model's train state and gradients alone need 99.4 MiB per device but cpu has "
        r"64.0 MiB free",
    ):
        build(config, runtime.select_devices(1))
    assert made == [True]  # only the abstract one
    build(_config(model="mlp", width=4), runtime.select_devices(1))  # 4.7 MiB: fits


def test_a_state_that_fits_but_not_with_its_gradients_stops_before_it_is_made(monkeypatch):
    """Issue 22 item 8: a train step holds the state and its gradients at the least; a width whose state alone fits
    (74.5 MiB of 90) but not with its gradients (+24.8 MiB) is refused before anything is allocated, naming
    config.width, not allocated and refused only after compiling."""
    from harness import build as build_lib
    from harness import steps

    made, init_state = [], steps.init_state

    def recording(model, *args, **kw):
        graphdef, state = init_state(model, *args, **kw)
        made.append(all(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(state.params)))
        return graphdef, state

    monkeypatch.setattr(runtime, "available_bytes", lambda devices: 90 * 2**20)
    monkeypatch.setattr(build_lib.steps, "init_state", recording)
    with pytest.raises(OutOfMemoryError, match=r"^config.width=64: .* need 99.4 MiB per device .* 90.0 MiB free"):
        build(_config(model="mlp", width=64), runtime.select_devices(1))
    assert made == [True]  # only the abstract one


class _Compiled:
    """A compiled step as check_memory sees it: XLA's memory analysis only."""

    def __init__(self, argument: int, temp: int):
        self.analysis = type(
            "M",
            (),
            dict(
                argument_size_in_bytes=argument,
                output_size_in_bytes=argument,
                temp_size_in_bytes=temp,
                alias_size_in_bytes=argument,
            ),
        )

    def memory_analysis(self):
        return self.analysis


def test_the_compiled_step_is_checked_against_the_memory_free_before_the_run_allocated(monkeypatch):
    """Issue 22 item 8: the step's need includes its arguments (the state already placed), so it is compared with
    the memory free before the run allocated them, and the hint names the width when the state is most of it."""
    from harness import parallel

    gib = 2**30
    monkeypatch.setattr(runtime, "available_bytes", lambda devices: 7 * gib)  # what is left after the allocation
    devices = runtime.select_devices(1)
    step = _Compiled(argument=15 * gib, temp=5 * gib)  # needs 20 GiB: state 15 GiB in place, 5 GiB of temporaries
    parallel.check_memory([step], devices, parallel.Budget(free=22 * gib, state=15 * gib, width=1))  # fits in 22
    with pytest.raises(
        OutOfMemoryError,
        match=r"needs 20.0 GiB .* has 18.0 GiB free per device: use a smaller "
        r"config.width or model \(config.width=100000: its train state alone is 15.0 GiB\)",
    ):
        parallel.check_memory([step], devices, parallel.Budget(free=18 * gib, state=15 * gib, width=100000))
    small_state = parallel.Budget(free=18 * gib, state=1 * gib, width=1)
    with pytest.raises(OutOfMemoryError, match=r"has 18.0 GiB free per device: use a smaller config.batch_size"):
        parallel.check_memory([_Compiled(argument=gib, temp=19 * gib)], devices, small_state)


def test_a_step_that_cannot_fit_is_refused_from_xla_s_estimate_before_anything_is_allocated(monkeypatch):
    """Issue 22 item 8: the train state and gradients fit (99.4 of 120 MiB) but the train step does not (pmap's
    step needs ~174 MiB by XLA's estimate): when the state is a large share of the free memory, the step is compiled
    from shapes alone and refused before any state is allocated, naming the width."""
    from harness import build as build_lib
    from harness import steps

    made, init_state = [], steps.init_state

    def recording(model, *args, **kw):
        graphdef, state = init_state(model, *args, **kw)
        made.append(all(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(state.params)))
        return graphdef, state

    monkeypatch.setattr(runtime, "available_bytes", lambda devices: 120 * 2**20)
    monkeypatch.setattr(build_lib.steps, "init_state", recording)
    with pytest.raises(
        OutOfMemoryError, match=r"XLA's estimate.* use a smaller config.width or model \(config.width=64"
    ):
        build(_config(model="mlp", width=64, batch_size=128), runtime.select_devices(1))
    assert made and all(made)  # traced only: nothing was allocated
    build(_config(model="mlp", width=16, batch_size=128), runtime.select_devices(1))  # 4 × smaller: fits, no compile
