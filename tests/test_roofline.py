"""Roofline figures of a row from a fixed step cost, on fake accelerators and a fixed CPU, and its picture."""

import types

import pytest
from test_explore import assert_picture

from harness import ceiling, peaks, pictures, roofline

H100 = types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3", platform="gpu")
CPU = types.SimpleNamespace(device_kind="cpu", platform="cpu")
ZEN5 = peaks.CpuInfo("AMD EPYC", "AuthenticAMD", 26, 2, 2500.0, 2, ("avx512f",))


@pytest.fixture
def measured(monkeypatch):
    """The measured ceiling: 400 TFLOP/s float32 and 2 TB/s per GPU, or the whole CPU's 200 GFLOP/s."""

    def fake(per):
        flops = 400e12 if per == "device" else 200e9
        monkeypatch.setattr(ceiling, "measured", lambda: {"per": per, "float32_flops_per_sec": flops})

    return fake


def test_figures_on_two_gpus(measured):
    measured("device")
    f = roofline.figures({"flops": 1e12, "bytes": 1e10}, 0.01, 256, [H100, H100], "float32")
    assert f["devices"] == 2 and f["flops_per_step"] == 2e12 and f["bytes_per_step"] == 2e10
    assert f["flops_per_example"] == 2e12 / 256 and f["arithmetic_intensity"] == 100.0
    assert f["achieved_flops_per_sec"] == 2e14
    assert f["mfu"] == pytest.approx(2e14 / (2 * 494.7e12))  # TF32 datasheet peak of both devices
    assert f["ceiling_flops_per_sec"] == 8e14 and f["ceiling_fraction"] == pytest.approx(0.25)
    assert f["peak_bandwidth_per_device"] == 3.35e12 and "h100" in f["bandwidth_source"]


def test_figures_on_fake_cpu_devices_use_the_whole_cpu(measured, monkeypatch):
    measured("cpu")
    monkeypatch.setattr(peaks, "cpu_info", lambda: ZEN5)
    f = roofline.figures({"flops": 1e9, "bytes": 1e8}, 0.1, 64, [CPU] * 8, "float32")
    assert f["achieved_flops_per_sec"] == pytest.approx(8e10)  # 8 per-device programs of 1 GFLOP in 0.1 s
    assert f["mfu"] == pytest.approx(8e10 / (2 * 2500e6 * 64))  # one CPU's peak, not 8
    assert f["ceiling_fraction"] == pytest.approx(0.4) and f["peak_bandwidth_per_device"] is None


def test_unknown_cost_peak_and_ceiling_are_na(monkeypatch):
    monkeypatch.setattr(ceiling, "measured", lambda: None)
    kind = types.SimpleNamespace(device_kind="weird accelerator", platform="gpu")
    f = roofline.figures(roofline.cost([{}]), 0.1, 64, [kind], "float32")
    assert f["flops_per_step"] is None and f["arithmetic_intensity"] is None and f["achieved_flops_per_sec"] is None
    assert f["mfu"] == f["ceiling_fraction"] == "n/a" and f["peak_source"].startswith("n/a")


def test_cost_reads_xla_cost_analysis():
    assert roofline.cost({"flops": 10.0, "bytes accessed": 4.0, "bytes accessed0{}": 2.0}) == {
        "flops": 10.0,
        "bytes": 4.0,
    }
    assert roofline.cost([{"flops": -1.0}]) == {"flops": None, "bytes": None}
    assert roofline.cost(None) == {"flops": None, "bytes": None}


def _row(intensity, achieved, dtype="float32", per="cpu", **figures):
    return {
        "kind": "throughput",
        "point": {"model": "mlp", "batch_size": 64, "dtype": dtype},
        "fingerprint": {
            "platform": "cpu",
            "ceiling": {"per": per, f"{dtype}_flops_per_sec": 2e11, "bytes_per_sec": 4e10},
        },
        "figures": {
            "examples_per_sec": 1000.0,
            "examples_per_sec_per_device": 125.0,
            "arithmetic_intensity": intensity,
            "achieved_flops_per_sec": achieved,
            "peak_flops_per_device": 3.2e11,
            **figures,
        },
    }


def test_panels_and_ceilings_of_a_tiny_ledger():
    older = {"kind": "throughput", "point": {}, "fingerprint": {}, "figures": {"examples_per_sec": 5.0}}
    rows = [_row(10.0, 5e10), _row(50.0, 1e11, "bfloat16", devices=8), older]
    panels = roofline.panels(rows, lambda fp: "cpu")
    assert list(panels) == ["cpu, 8 device(s)"] and panels["cpu, 8 device(s)"] == rows[:2]  # older: no figures
    compute, memory = roofline.ceilings(rows[:2])
    assert compute == {
        ("float32", "datasheet"): 3.2e11,
        ("float32", "measured"): 2e11,
        ("bfloat16", "datasheet"): 3.2e11,
        ("bfloat16", "measured"): 2e11,
    }
    assert memory == {"measured": 4e10}  # no datasheet bandwidth for a CPU


def test_roofline_picture(tmp_path):
    rows = [_row(10.0, 5e10), _row(50.0, 1e11, "bfloat16")]
    with pictures.drawing():
        path = roofline.draw(rows, tmp_path / "roofline.png", pictures, lambda r: r["point"]["model"], lambda fp: "cpu")
        empty = roofline.draw([], tmp_path / "empty.png", pictures, str, str)
    assert_picture(path)
    assert_picture(empty)
