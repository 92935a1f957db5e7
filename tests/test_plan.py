"""The plan: resolved once from the config and the devices by the per-platform table, printed, stored."""

import dataclasses
import json

import jax
import pytest

from harness import cli, models
from harness import config as config_lib
from harness import plan as plan_lib
from harness.errors import ConfigError

CPU = jax.devices("cpu")


class FakeGpu:
    platform = "gpu"


def test_steps_per_dispatch_auto_policy():
    one, eight = CPU[:1], CPU[:8]
    assert plan_lib.steps_per_dispatch(0, one, 128, 0) == 16
    assert plan_lib.steps_per_dispatch(0, one, 100, 0) == 4
    assert plan_lib.steps_per_dispatch(0, one, 128, 24) == 8
    assert plan_lib.steps_per_dispatch(0, eight, 128, 0) == 1
    assert plan_lib.steps_per_dispatch(2, eight, 128, 0) == 2
    assert plan_lib.steps_per_dispatch(0, [FakeGpu()], 128, 0) == 1


def _plan(devices, **overrides) -> plan_lib.Plan:
    c = config_lib.base_config()
    c.update(overrides)
    return plan_lib.resolve(c, devices)


def test_the_default_cnn_on_one_cpu_device_takes_the_cpu_row_of_the_table():
    p = _plan(CPU[:1])
    assert p == plan_lib.Plan("pmap", "cpu", 1, 1, "cnn", "slices", 4, 16, "float32")
    assert p.describe() == "pmap on 1 cpu device, slice convolutions, 4 micro-batches, 16 steps per dispatch, float32"
    assert _plan(CPU[:1], batch_size=6).micro_batches == 2  # the first of 4, 2 dividing the per-device batch
    assert _plan(CPU[:1], batch_size=7).micro_batches == 1


def test_several_devices_or_another_platform_take_the_default_row():
    p = _plan(CPU[:8], parallel="jit", dtype="bfloat16")
    assert (p.conv, p.micro_batches, p.steps_per_dispatch) == ("xla", 1, 1)
    assert p.describe() == "jit on 8 cpu devices, XLA convolutions, 1 micro-batch, 1 step per dispatch, bfloat16"
    gpu = _plan([FakeGpu()])
    assert (gpu.platform, gpu.conv, gpu.micro_batches, gpu.steps_per_dispatch) == ("gpu", "xla", 1, 1)


def test_an_mlp_gets_no_micro_batches_and_no_convolutions_in_its_line():
    p = _plan(CPU[:1], model="mlp")
    assert (p.family, p.micro_batches, p.steps_per_dispatch) == ("mlp", 1, 16)
    assert p.describe() == "pmap on 1 cpu device, 1 micro-batch, 16 steps per dispatch, float32"


def test_explicit_choices_win_over_the_table():
    p = _plan(CPU[:1], conv="xla", micro_batches=2, steps_per_dispatch=4)
    assert (p.conv, p.micro_batches, p.steps_per_dispatch) == ("xla", 2, 4)
    assert _plan(CPU[:1], conv="xla").micro_batches == 1  # micro-batches only pay with slice convolutions
    assert _plan(CPU[:4], conv="slices", micro_batches=0).micro_batches == 1  # … on one device


def test_the_model_family_comes_from_the_registry(monkeypatch):
    monkeypatch.setitem(models.MODELS, "convnet", dataclasses.replace(models.MODELS["cnn_tiny"]))
    assert _plan(CPU[:1], model="convnet").micro_batches == 4  # a CNN by its family, whatever its name
    monkeypatch.setitem(models.MODELS, "cnn_like_mlp", dataclasses.replace(models.MODELS["mlp"]))
    assert _plan(CPU[:1], model="cnn_like_mlp").micro_batches == 1


def test_resolving_validates_the_config():
    with pytest.raises(ConfigError, match="divisible by the device count \\(8\\)"):
        _plan(CPU[:8], batch_size=100)
    with pytest.raises(ConfigError, match=r"config\.micro_batches=3"):
        _plan(CPU[:1], batch_size=64, micro_batches=3)


def test_a_plan_is_frozen_and_round_trips_through_its_dict():
    p = _plan(CPU[:1])
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.micro_batches = 2
    assert plan_lib.Plan(**json.loads(json.dumps(p.to_dict()))) == p


def test_bench_prints_the_plan_before_its_rows_and_stores_it_in_them(capsys, tmp_path):
    argv = ["bench", "--models", "mlp_tiny", "--batch-sizes", "16", "--num-devices", "1", "--windows", "5"]
    assert cli.main([*argv, "--dispatches", "1", "--steps-per-dispatch", "2", "--no-ledger"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "] measuring " not in line]  # progress lines
    assert lines[0] == "plan: pmap on 1 cpu device, 1 micro-batch, 2 steps per dispatch, float32"
    assert lines[1].startswith("mlp_tiny ")
    (row,) = [json.loads(line) for line in lines if line.startswith("{")]
    expected = _plan(CPU[:1], model="mlp_tiny", batch_size=16)
    assert row["figures"]["plan"] == dataclasses.replace(expected, steps_per_dispatch=2).to_dict()
    assert (row["figures"]["conv_impl"], row["figures"]["micro_batches"]) == ("slices", 1)  # the old keys stay


def test_batchnorm_takes_one_micro_batch_where_the_table_would_slice():
    """BatchNorm's statistics are the whole batch's: its auto micro-batches are 1 (an explicit count > 1 is a
    config error, in test_config), so no run normalises by slices of its batch."""
    p = _plan(CPU[:1], norm="batch")
    assert (p.conv, p.micro_batches) == ("slices", 1)
    assert plan_lib.micro_batches(0, CPU[:1], "cnn", 128, "slices", "batch") == 1
    assert _plan(CPU[:1], norm="batch", micro_batches=1).micro_batches == 1
    with pytest.raises(ConfigError, match="micro_batches=2: BatchNorm"):
        _plan(CPU[:1], norm="batch", micro_batches=2)
