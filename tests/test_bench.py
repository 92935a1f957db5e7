"""A tiny version of every benchmark mode, and the timing protocol checked with a fake clock."""

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from harness import bench, ledger
from harness.errors import ConfigError

TINY = bench.Point(model="mlp_tiny", batch_size=16, num_devices=8)


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_compile_and_warmup_are_excluded_from_step_times(monkeypatch):
    clock = FakeClock()
    original_args, original_compile = bench._Runner.args, jax.stages.Lowered.compile

    def args(self):  # every dispatch "takes" 1 s
        clock.t += 1.0
        return original_args(self)

    def compile_(self, *a, **kw):  # compiling "takes" 1000 s
        clock.t += 1000.0
        return original_compile(self, *a, **kw)

    monkeypatch.setattr(bench._Runner, "args", args)
    monkeypatch.setattr(jax.stages.Lowered, "compile", compile_)
    f = bench.measure(TINY, windows=5, dispatches_per_window=4, warmup=3, clock=clock)
    assert f["compile_seconds"] == 1000.0 and f["time_to_first_step_seconds"] >= 1001.0
    assert f["step_seconds_median"] == f["step_seconds_p10"] == f["step_seconds_p90"] == 1.0
    assert f["steps_per_window"] == 4 and f["examples_per_sec"] == 16.0


@pytest.mark.parametrize(
    "point",
    [
        TINY,
        dataclasses.replace(TINY, parallel="jit"),
        dataclasses.replace(TINY, data="host"),
        dataclasses.replace(TINY, steps_per_dispatch=3),
        dataclasses.replace(TINY, model="cnn_tiny", dtype="bfloat16", num_devices=1),
    ],
    ids=["pmap", "jit", "host", "fused", "cnn-bf16"],
)
def test_every_mode_measures_and_makes_a_valid_row(point):
    f = bench.measure(point, windows=5, dispatches_per_window=2, warmup=1)
    assert f["examples_per_sec"] > 0 and f["step_seconds_p10"] <= f["step_seconds_median"] <= f["step_seconds_p90"]
    assert f["flops_per_example"] > 0 and f["loss_finite"]
    if bench.cpu_peak(point.dtype)[0] is None:  # /proc/cpuinfo without a clock: the peak is unknown
        assert f["mfu"] == "n/a"
    else:
        assert isinstance(f["mfu"], float) and 0 < f["mfu"] < 1
    row = ledger.make_row("throughput", dataclasses.asdict(point), f)
    assert ledger.validate(row) == [] and row["fingerprint"]["cpu_cores"] >= 1


def test_flops_per_example_match_the_model():
    f = bench.measure(bench.Point(model="mlp", batch_size=64, num_devices=1), windows=5, dispatches_per_window=1)
    dense = 784 * 128 + 128 * 10  # multiply-adds per example forward
    assert 4 * dense < f["flops_per_example"] < 8 * dense  # forward + backward ≈ 6 × forward


def test_sweep_walks_up_and_stops():
    tried = bench.sweep(TINY, max_batch=64, windows=5, dispatches_per_window=1, warmup=1)
    sizes = [t["point"].batch_size for t in tried]
    assert sizes[0] == 16 and sizes == sorted(sizes) and max(sizes) <= 64


def test_time_to_accuracy_on_tiny_data(tiny_data_dir):
    overrides = [
        f"data_dir={tiny_data_dir}",
        "model=mlp_tiny",
        "batch_size=64",
        "num_epochs=5",
        "dataset=fashion_mnist",
    ]
    f = bench.time_to_accuracy("smoke", 0.5, [0, 1], overrides)
    assert f["seeds"] == 2 and f["reached"] == 2 and f["min_seconds"] <= f["median_seconds"] <= f["max_seconds"]
    assert all(r["epochs"] and r["accuracy"] >= 0.5 for r in f["runs"])
    row = ledger.make_row("time_to_accuracy", {"config": "smoke", "target": 0.5}, f)
    assert ledger.validate(row) == []


def test_bad_points_are_refused():
    with pytest.raises(ConfigError, match="allowed: device, host"):
        bench.measure(dataclasses.replace(TINY, data="disk"))
    with pytest.raises(ConfigError, match="divisible by the device count"):
        bench.measure(dataclasses.replace(TINY, batch_size=12))
    with pytest.raises(ConfigError, match="at least 5 timing windows"):
        bench.measure(TINY, windows=3)


def test_peak_table_and_cpu_peak():
    assert bench.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16")[0] == 989.4e12
    assert bench.peak_flops("weird accelerator", "float32") == (None, None)
    peak, source = bench.peak_flops("cpu", "float32")
    assert peak and "cores" in source
    assert np.isfinite(peak)


@pytest.fixture
def no_measuring(monkeypatch):
    """Any measurement or training fails the test: the checks below must come first."""

    def measured(*args, **kwargs):
        pytest.fail("measured before the arguments were checked")

    monkeypatch.setattr(bench, "measure", measured)
    monkeypatch.setattr(bench, "time_to_accuracy", measured)


def bench_cli_run(capsys, *argv):
    from harness import cli

    rc = cli.main(["bench", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["tta", "--seeds", "a,b"], "--seeds='a,b': expected comma-separated integers in [0, 2**32)"),
        (["tta", "--seeds", "0,-1"], "--seeds='0,-1'"),
        (["tta", "--seeds", ","], "--seeds=','"),
        (["tta", "--target", "2"], "--target=2.0: the test accuracy to reach must be in (0, 1]"),
        (["tta", "--target", "0"], "--target=0.0"),
        (["check", "--tolerance", "-1"], "--tolerance=-1.0: the allowed throughput drop must be in [0, 1)"),
        (["check", "--tolerance", "1"], "--tolerance=1.0"),
        (["check", "--tolerance", "nan"], "--tolerance=nan"),
        (["run", "--windows", "3"], "--windows=3: at least 5 timing windows"),
        (["run", "--dispatches", "0"], "--dispatches=0: at least 1 dispatch"),
        (["run", "--num-devices", "-1"], "--num-devices=-1: must be 0 (auto) or positive"),
        (["run", "--micro-batches", "-2"], "--micro-batches=-2"),
        (["run", "--steps-per-dispatch", "auto,2"], "--steps-per-dispatch='auto,2'"),
    ],
)
def test_bad_arguments_are_one_line_before_any_measurement(no_measuring, capsys, tmp_path, argv, fragment):
    rc, _, err = bench_cli_run(capsys, *argv, "--ledger", str(tmp_path))
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("harness: error: ") and "Traceback" not in err
    assert fragment in lines[0] and "config." not in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("ledger_dir", "fragment"),
    [("passwd", "--ledger {}: exists and is not a directory"), ("passwd/x", "--ledger {}: {} is not a directory")],
)
def test_a_ledger_path_that_is_no_directory_is_refused_before_measuring(
    no_measuring, capsys, tmp_path, ledger_dir, fragment
):
    (tmp_path / "passwd").write_text("root:x:0:0\n")
    rc, _, err = bench_cli_run(capsys, "run", "--ledger", str(tmp_path / ledger_dir))
    assert rc == 2 and err.splitlines() == [
        f"harness: error: {fragment.format(tmp_path / ledger_dir, tmp_path / 'passwd')}"
    ]
    assert (tmp_path / "passwd").read_text() == "root:x:0:0\n"


def test_check_without_a_baseline_says_nothing_was_checked(no_measuring, capsys, tmp_path, monkeypatch):
    from harness import bench_cli

    rc, out, err = bench_cli_run(capsys, "check", "--ledger", str(tmp_path))  # an empty ledger: nothing measured
    assert (rc, err) == (bench_cli.EXIT_NO_BASELINE, "") and rc not in (0, 1, 2)
    assert out.startswith("no baseline: nothing checked") and "ok" not in out.split()
    committed = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "cpu.jsonl"
    row = committed.read_text().splitlines()[0]  # a valid row, for no point measured here
    assert ledger.validate(json.loads(row)) == []
    (tmp_path / "other.jsonl").write_text(row + "\n")
    monkeypatch.setattr(bench_cli, "_measure_grid", lambda args: [])
    rc, out, err = bench_cli_run(capsys, "check", "--ledger", str(tmp_path))
    assert rc == bench_cli.EXIT_NO_BASELINE and out.startswith("no baseline: nothing checked") and "ok" not in out
