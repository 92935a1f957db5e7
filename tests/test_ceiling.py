"""The measured ceiling: a short calibration on this machine, once per process, scaled to the devices used."""

import jax
import pytest

from harness import ceiling


def test_calibration_measures_positive_rates():
    result = ceiling.calibrate(jax.devices()[0], matmul_size=128, copy_elements=2**16)
    assert result["per"] == "cpu" and result["matmul_size"] == 128 and result["copy_bytes"] == 2 * 2**16 * 4
    for key in ("float32_flops_per_sec", "bfloat16_flops_per_sec", "bytes_per_sec", "seconds"):
        assert isinstance(result[key], float) and result[key] > 0, key


def test_calibration_divides_work_by_the_best_time():
    """With a clock that advances 1 s per reading, every timed call "takes" 1 s: rates are the work per call."""
    ticks = iter(range(10**6))
    result = ceiling.calibrate(jax.devices()[0], matmul_size=64, copy_elements=1024, clock=lambda: float(next(ticks)))
    assert result["float32_flops_per_sec"] == result["bfloat16_flops_per_sec"] == 2 * 64**3
    assert result["bytes_per_sec"] == 2 * 1024 * 4


def test_measured_once_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(ceiling, "calibrate", lambda: calls.append(1) or {"bytes_per_sec": 1.0})
    ceiling.measured.cache_clear()
    try:
        assert ceiling.measured() is ceiling.measured() and calls == [1]
    finally:
        ceiling.measured.cache_clear()


@pytest.mark.parametrize(("per", "devices", "factor"), [("cpu", 8, 1), ("device", 8, 8), ("device", 1, 1)])
def test_ceilings_scale_with_devices_except_on_a_cpu(per, devices, factor):
    measured = {"per": per, "float32_flops_per_sec": 100.0, "bytes_per_sec": 10.0}
    assert ceiling.flops(measured, "float32", devices) == 100.0 * factor
    assert ceiling.bandwidth(measured, devices) == 10.0 * factor
    assert ceiling.flops(measured, "bfloat16", devices) is None
    assert ceiling.flops(None, "float32") is None and ceiling.bandwidth(None) is None
