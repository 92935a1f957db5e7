"""A tiny version of every benchmark mode, and the timing protocol checked with a fake clock."""

import dataclasses
import json
from pathlib import Path

import jax
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


def _sweep_with(monkeypatch, throughputs: dict, **kw) -> list[tuple[int, float | None]]:
    """``bench.sweep`` from batch 16 where measuring batch B gives ``throughputs[B]`` examples/s (an exception
    there is raised); returns (batch size, examples/s or None) per size tried."""

    def measure(point, **_):
        value = throughputs[point.batch_size]
        if isinstance(value, Exception):
            raise value
        return {"examples_per_sec": value}

    monkeypatch.setattr(bench, "measure", measure)
    tried = bench.sweep(TINY, **kw)
    return [(t["point"].batch_size, t["figures"] and t["figures"]["examples_per_sec"]) for t in tried]


@pytest.mark.parametrize(
    ("throughputs", "kw", "sizes"),
    [
        ({16: 100, 32: 200, 64: 201, 128: 202, 256: 999}, {}, [16, 32, 64, 128]),  # 2 sizes under 5 %: stop
        ({16: 100, 32: 200, 64: 201, 128: 202, 256: 203, 512: 999}, {"patience": 3}, [16, 32, 64, 128, 256]),
        ({16: 100, 32: 104, 64: 108, 128: 999}, {}, [16, 32, 64]),  # +4 %, +3.8 %: below min_gain, stale
        ({16: 100, 32: 104, 64: 108, 128: 999}, {"min_gain": 0.03, "max_batch": 128}, [16, 32, 64, 128]),
        ({16: 100, 32: 101, 64: 200, 128: 201, 256: 202, 512: 999}, {}, [16, 32, 64, 128, 256]),  # a gain resets
        ({16: 100, 32: 50, 64: 60, 128: 999}, {}, [16, 32, 64]),  # slower counts as stale; best stays 100
        ({16: 100, 32: 200, 64: 400, 128: 800}, {"max_batch": 64}, [16, 32, 64]),
    ],
)
def test_sweep_stops_after_patience_sizes_without_min_gain(monkeypatch, throughputs, kw, sizes):
    tried = _sweep_with(monkeypatch, throughputs, **kw)
    assert tried == [(b, throughputs[b]) for b in sizes]


def test_sweep_ends_at_out_of_memory_and_raises_other_runtime_errors(monkeypatch):
    for message in ("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.0GiB", "CUDA: out of memory"):
        oom = jax.errors.JaxRuntimeError(message)
        assert _sweep_with(monkeypatch, {16: 100, 32: 200, 64: oom, 128: 999}) == [(16, 100), (32, 200), (64, None)]
        assert bench.sweep(TINY)[-1]["stopped"] == "out of memory"  # still measuring with the fake
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        _sweep_with(monkeypatch, {16: 100, 32: jax.errors.JaxRuntimeError("INTERNAL: something else")})


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


def test_peak_table():
    assert bench.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16")[0] == 989.4e12
    assert bench.peak_flops("weird accelerator", "float32") == (None, None)


def _fake_cpuinfo(monkeypatch, tmp_path, text: str | None) -> None:
    """``bench`` reads ``text`` as /proc/cpuinfo (None: unreadable) on a process allowed 2 cores."""
    fake = tmp_path / "cpuinfo"
    if text is not None:
        fake.write_text(text)
    monkeypatch.setattr(bench, "Path", lambda p: fake if str(p) == "/proc/cpuinfo" else Path(p))
    monkeypatch.setattr(bench.os, "sched_getaffinity", lambda pid: {0, 1})


@pytest.mark.parametrize(
    ("flags", "dtype", "per_cycle", "unit"),
    [
        ("fpu sse2", "float32", 8, "vector units"),
        ("fpu avx2 fma", "float32", 32, "vector units"),
        ("fpu avx2 fma", "bfloat16", 32, "vector units"),
        ("avx2 fma avx512f avx512_bf16", "float32", 64, "vector units"),
        ("avx2 fma avx512f avx512_bf16", "bfloat16", 128, "vector units"),
        ("avx2 fma avx512f avx512_bf16 amx_bf16", "bfloat16", 1024, "AMX"),
    ],
)
def test_cpu_peak_from_a_fixed_cpuinfo(monkeypatch, tmp_path, flags, dtype, per_cycle, unit):
    _fake_cpuinfo(
        monkeypatch, tmp_path, f"processor\t: 0\nmodel name\t: Fake CPU\ncpu MHz\t\t: 2000.000\nflags\t\t: {flags}\n"
    )
    peak, source = bench.peak_flops("cpu", dtype)
    assert peak == 2 * 2000e6 * per_cycle
    assert source == f"computed: 2 cores × 2000 MHz × {per_cycle} {dtype} FLOP/cycle ({unit})"


@pytest.mark.parametrize("text", ["processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\n", None])
def test_cpu_peak_is_unknown_without_a_clock(monkeypatch, tmp_path, text):
    """An Arm /proc/cpuinfo has no 'cpu MHz' line (and a sandbox may hide the file): no peak, no MFU."""
    _fake_cpuinfo(monkeypatch, tmp_path, text)
    assert bench.cpu_info()["mhz"] is None
    assert bench.cpu_peak("float32") == bench.peak_flops("cpu", "bfloat16") == (None, None)


def test_mfu_is_na_when_the_cpu_peak_is_unknown(monkeypatch, tmp_path):
    _fake_cpuinfo(monkeypatch, tmp_path, None)
    f = bench.measure(TINY, windows=5, dispatches_per_window=1, warmup=1)
    assert f["mfu"] == "n/a" and f["examples_per_sec"] > 0
    assert ledger.validate(ledger.make_row("throughput", dataclasses.asdict(TINY), f)) == []


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
