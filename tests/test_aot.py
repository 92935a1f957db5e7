"""harness.aot: harness's own steps compiled for described TPU slices (libtpu on this CPU host), their memory
against HBM, XLA's cost and predicted step time, and the search for the largest batch that fits."""

from __future__ import annotations

import pytest

from harness import aot, topology
from harness import config as config_lib
from harness.build import build

libtpu = pytest.mark.skipif(topology.libtpu_version() is None, reason="libtpu is not installed (harness[tpu])")


def _config(name: str = "smoke", *overrides: str):
    return config_lib.load(name, list(overrides))


# ---- the search, on a fake memory model ------------------------------------------------------------------------


def _linear(limit_batch: int, base: int = 1000, per_example: int = 10, compiles_until: float = 1.5):
    """needs(batch) of a step whose memory grows linearly; beyond ``compiles_until`` × the limit, XLA refuses."""
    calls = []

    def needs(batch: int) -> int | None:
        calls.append(batch)
        return base + per_example * batch if batch <= compiles_until * limit_batch else None

    return needs, calls, base + per_example * limit_batch


@pytest.mark.parametrize("limit_batch", [130, 1000, 3333, 5000, 59999])
def test_fit_finds_the_largest_batch_within_its_precision(limit_batch):
    needs, calls, limit = _linear(limit_batch)
    result = aot.fit(needs, limit, start=128, multiple=8, max_batch=60000, precision=1 / 16)
    largest, too_big = result["largest"], result["first_too_big"]
    assert largest <= limit_batch < too_big  # largest fits, the next one tried does not
    assert largest % 8 == 0 and too_big % 8 == 0
    assert too_big - largest <= max(8, largest / 16)
    assert len(calls) <= 8, calls  # the interpolation makes it a few compilations, not a dozen
    assert [b for b, _ in result["tried"]] == calls


def test_fit_stops_doubling_at_the_first_batch_that_does_not_fit():
    needs, calls, limit = _linear(1000, compiles_until=1.0)  # beyond the limit nothing compiles
    result = aot.fit(needs, limit, start=128, multiple=8, max_batch=1 << 30)
    failed = [b for b, need in result["tried"] if need is None]
    assert calls[:2] == [128, 256] and failed
    assert all(b <= failed[0] for b in calls), calls  # never a batch beyond the first that did not fit
    assert result["first_too_big"] <= failed[0]


def test_fit_when_even_the_first_batch_does_not_fit_or_the_largest_asked_fits():
    needs, calls, limit = _linear(100)
    assert aot.fit(needs, limit, 128, 8, 60000) == {
        "largest": None,
        "first_too_big": 128,
        "capped": False,
        "tried": [(128, 1000 + 10 * 128)],  # it compiled, but needs more than the limit
    }
    needs, calls, limit = _linear(10**9)
    result = aot.fit(needs, limit, 128, 8, 60000)
    assert (result["largest"], result["capped"], calls[-1]) == (60000, True, 60000)


def test_the_predicted_step_time_falls_back_to_a_roofline_when_xla_gives_none():
    cost = {"flops": 2e12, "bytes": 1e9, "optimal_seconds": -3.999}  # libtpu's "no model" answer on some v5e steps
    t = aot.timing(cost, "TPU v5 lite", "bfloat16", batch=1024, devices=8, per_chip=1)
    assert t["prediction"] == "roofline"
    assert t["step_seconds"] == pytest.approx(max(2e12 / 197e12, 1e9 / 819e9))
    assert t["mfu"] == pytest.approx(2e12 / t["step_seconds"] / 197e12)
    xla = aot.timing({**cost, "optimal_seconds": 0.02}, "TPU v5 lite", "bfloat16", 1024, 8, 1)
    assert (xla["prediction"], xla["step_seconds"], xla["examples_per_sec"]) == ("xla_tpu_cost_model", 0.02, 51200)
    v2 = aot.timing({**cost, "optimal_seconds": 0.02}, "TPU v2", "float32", 1024, 8, 2)  # two cores per chip
    assert v2["chips"] == 4 and v2["mfu"] == pytest.approx(2e12 * 8 / 0.02 / (46e12 * 4))


# ---- real compilations for described slices --------------------------------------------------------------------


@libtpu
def test_build_on_a_slice_makes_shapes_only():
    tpu = topology.describe("v5e-4")
    config = _config("fashion_mnist_best", "norm=batch")
    run = build(config, list(tpu.devices))
    assert run.plan.platform == "tpu" and run.plan.num_devices == 4
    leaves = [run.state.params, run.state.ema, run.state.batch_stats]
    assert all(x is not None for x in leaves)  # BatchNorm statistics and the EMA are in the compiled state
    import jax

    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(run.state))


@libtpu
@pytest.mark.parametrize("strategy", ["pmap", "jit", "shard_map"])
def test_the_real_train_step_compiles_for_a_tpu_slice_under_each_strategy(strategy):
    """fashion_mnist_best's step (augmentation, dropout, label smoothing, EMA, test-time flips) with BatchNorm on,
    for the 4 chips of a v5e-4, through plan → build → Parallel.compile."""
    tpu = topology.describe("v5e-4")
    config = _config("fashion_mnist_best", f"parallel={strategy}", "norm=batch", "batch_size=32")
    f = aot.predict(config, tpu)
    assert f["plan"]["strategy"] == strategy and f["plan"]["platform"] == "tpu"
    assert set(f["memory"]) == {"train", "eval"} and f["fits"]
    assert 0 < f["memory_per_device"] < f["hbm_per_device"] == 16 * 2**30
    assert f["flops_per_device"] > 0 and f["bytes_per_device"] > 0
    assert f["step_seconds"] > 0 and f["examples_per_sec"] == pytest.approx(32 / f["step_seconds"])


@libtpu
def test_memory_and_flops_grow_with_the_batch():
    tpu = topology.describe("v5e-1")
    small, large = (aot.predict(_config("smoke", f"batch_size={b}"), tpu) for b in (128, 8192))
    assert large["memory"]["train"]["temporaries"] > small["memory"]["train"]["temporaries"]
    assert large["memory_per_device"] > small["memory_per_device"]
    assert large["flops_per_device"] > 32 * small["flops_per_device"]


@libtpu
def test_fused_steps_and_micro_batches_are_compiled_and_costed_whole():
    tpu = topology.describe("v5e-1")
    fused = aot.predict(_config("smoke", "steps_per_dispatch=4", "log_every_steps=4"), tpu)
    assert set(fused["memory"]) == {"train", "train_steps", "eval"}
    plain = aot.predict(_config("smoke", "batch_size=64"), tpu)
    sliced = aot.predict(_config("smoke", "batch_size=64", "micro_batches=4"), tpu)
    assert sliced["plan"]["micro_batches"] == 4
    # a scan counts its body once: the cost comes from the twin step without micro-batches, so it is the same
    assert sliced["flops_per_device"] == pytest.approx(plain["flops_per_device"], rel=0.05)


@libtpu
def test_a_multi_host_slice_compiles_with_its_hosts_as_processes():
    tpu = topology.describe("v5e-16")  # 16 chips on 4 hosts
    f = aot.predict(_config("smoke", "batch_size=64"), tpu)
    assert (f["plan"]["processes"], f["plan"]["num_devices"], f["chips"]) == (4, 16, 16)


@libtpu
def test_a_step_that_does_not_fit_is_a_compile_error_of_one_line():
    tpu = topology.describe("v5e-1")
    with pytest.raises(aot.CompileError) as e:
        aot.predict(_config("fashion_mnist_mlp", "width=64", "batch_size=1048576"), tpu)
    assert "\n" not in str(e.value) and "RESOURCE_EXHAUSTED" in str(e.value)


@libtpu
def test_a_step_whose_cost_twin_does_not_compile_is_still_predicted_without_a_cost(monkeypatch):
    """With micro-batches the cost comes from a twin without them, which may need more memory than the chip has:
    the run's own memory figures stay, the step time is then 'none', never a traceback."""

    def twin_too_big(*args):
        raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM")

    monkeypatch.setattr(aot, "_cost", twin_too_big)
    f = aot.predict(_config("smoke", "batch_size=64", "micro_batches=4"), topology.describe("v5e-1"))
    assert f["fits"] and f["memory_per_device"] > 0
    assert (f["prediction"], f["step_seconds"], f["flops_per_device"]) == ("none", None, None)
