"""A tiny version of every benchmark mode, and the timing protocol checked with a fake clock."""

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from harness import bench, ledger, peaks
from harness.errors import ConfigError, OutOfMemoryError

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
    # the roofline's coordinates: the whole step's FLOPs and bytes (per-device program × devices), and rates
    assert f["flops_per_step"] > 0 and f["bytes_per_step"] > 0 and f["devices"] == (point.num_devices or 1)
    assert f["flops_per_example"] == pytest.approx(f["flops_per_step"] / point.batch_size)
    assert f["arithmetic_intensity"] == pytest.approx(f["flops_per_step"] / f["bytes_per_step"])
    assert f["achieved_flops_per_sec"] == pytest.approx(f["flops_per_step"] / f["step_seconds_median"])
    peak = peaks.cpu_peak(point.dtype)[0]  # the whole CPU's, however many fake devices share it
    if peak is None:  # a CPU this harness has no FLOP/cycle for: no MFU
        assert f["mfu"] == "n/a"
    else:
        assert f["mfu"] == pytest.approx(f["achieved_flops_per_sec"] / peak) and 0 < f["mfu"] < 1
    assert f["ceiling_fraction"] == pytest.approx(f["achieved_flops_per_sec"] / f["ceiling_flops_per_sec"])
    assert f["host_peak_rss_bytes"] > 2**20
    row = ledger.make_row("throughput", dataclasses.asdict(point), f)
    assert ledger.validate(row) == [] and row["fingerprint"]["cpu_cores"] >= 1
    assert row["fingerprint"]["ceiling"][f"{point.dtype}_flops_per_sec"] == f["ceiling_flops_per_sec"]


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


@pytest.mark.parametrize(
    "oom",
    [
        jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.0GiB\nmore"),
        jax.errors.JaxRuntimeError("CUDA: out of memory"),
        OutOfMemoryError("the train step needs 9.0 GiB per device (XLA's estimate) but cpu has 1.0 GiB free"),
        MemoryError(),
    ],
    ids=["xla", "cuda", "harness-check", "host"],
)
def test_sweep_ends_at_out_of_memory(monkeypatch, oom):
    assert _sweep_with(monkeypatch, {16: 100, 32: 200, 64: oom, 128: 999}) == [(16, 100), (32, 200), (64, None)]
    last = bench.sweep(TINY)[-1]  # still measuring with the fake
    assert last["stopped"] == "out of memory" and last["point"].batch_size == 64
    assert last["error"] == (str(oom).splitlines() or ["MemoryError"])[0]


@pytest.mark.parametrize("error", [jax.errors.JaxRuntimeError("INTERNAL: something else"), ConfigError("bad")])
def test_sweep_raises_other_errors(monkeypatch, error):
    with pytest.raises(type(error), match=str(error)):
        _sweep_with(monkeypatch, {16: 100, 32: error})


def test_cli_sweep_records_the_out_of_memory_point(monkeypatch, capsys, tmp_path):
    """`harness bench sweep` with a fake measure that runs out of memory at batch 64: rows for 16 and 32, a row
    saying batch 64 ran out of memory, the best (32); no traceback, and the report lists the stop."""
    real = bench.measure(TINY, windows=5, dispatches_per_window=1, warmup=1)  # figures of the right shape

    def measure(point, **_):
        if point.batch_size == 64:
            raise OutOfMemoryError("the train step needs 9.0 GiB per device (XLA's estimate) but cpu has 1.0 GiB free")
        return {**real, "examples_per_sec": 100.0 * point.batch_size}

    monkeypatch.setattr(bench, "measure", measure)
    argv = ["sweep", "--models", "mlp_tiny", "--batch-sizes", "16", "--num-devices", "8", "--ledger", str(tmp_path)]
    rc, out, err = bench_cli_run(capsys, *argv)
    assert (rc, err) == (0, "") and "batch 64: out of memory, the sweep stops here (the train step needs 9.0" in out
    rows = ledger.read(tmp_path)
    assert [(r["kind"], r["point"]["batch_size"]) for r in rows] == [
        ("throughput", 16),
        ("throughput", 32),
        ("out_of_memory", 64),
        ("sweep_best", 32),
    ]
    assert rows[2]["figures"] == {"stopped": "out of memory", "error": rows[2]["figures"]["error"]}
    assert "Out of memory" in ledger.leaderboard(rows) and "| 64 | out of memory |" in ledger.leaderboard(rows)


def test_bench_run_and_sweep_say_which_point_they_measure_before_measuring_it(monkeypatch, capsys, tmp_path):
    """Long commands speak: a line before each point (which, of how many, the seconds so far), then its row."""
    real = bench.measure(TINY, windows=5, dispatches_per_window=1, warmup=1)  # figures of the right shape
    measured = []

    def measure(point, **_):
        measured.append(point.batch_size)
        return {**real, "examples_per_sec": 100.0 * point.batch_size if point.batch_size < 64 else 1.0}

    monkeypatch.setattr(bench, "measure", measure)
    common = ["--models", "mlp_tiny", "--num-devices", "8", "--steps-per-dispatch", "1", "--no-ledger"]
    rc, out, _ = bench_cli_run(capsys, "run", "--batch-sizes", "16,32", *common)
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert rc == 0 and [line.split("  (")[0] for line in lines] == [
        "[1/2] measuring mlp_tiny w1 b16 float32 pmap device ×1",
        "[2/2] measuring mlp_tiny w1 b32 float32 pmap device ×1",
    ]
    assert out.index("[2/2]") > out.index("mlp_tiny w1  ") and lines[0].endswith(" s so far)")
    rc, out, _ = bench_cli_run(capsys, "sweep", "--batch-sizes", "16", *common)
    lines = [line.split("  (")[0] for line in out.splitlines() if line.startswith("[")]
    assert rc == 0 and lines == [
        f"[{i}] measuring mlp_tiny w1 b{b} float32 pmap device ×1" for i, b in ((1, 16), (2, 32), (3, 64), (4, 128))
    ]


def test_cli_sweep_where_nothing_fits(monkeypatch, capsys, tmp_path):
    """The compiled step checked against free memory (200 KiB here) before it runs: the sweep's first size is an
    ``out_of_memory`` row, no best, exit 0, no traceback."""
    from harness import runtime

    monkeypatch.setattr(runtime, "available_bytes", lambda devices: 200 * 1024)  # the state fits, the step not
    argv = ["sweep", "--models", "mlp_tiny", "--batch-sizes", "16", "--num-devices", "8", "--ledger", str(tmp_path)]
    rc, out, err = bench_cli_run(capsys, *argv)
    assert (rc, err) == (0, "") and "no batch size from 16 fit in memory" in out
    (row,) = ledger.read(tmp_path)
    assert (row["kind"], row["point"]["batch_size"], row["figures"]["stopped"]) == (
        "out_of_memory",
        16,
        "out of memory",
    )
    assert "per device (XLA's estimate)" in row["figures"]["error"]


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


def _mlp_tiny_params(width: int) -> int:
    return 784 * 16 * width + 16 * width + 16 * width * 10 + 10


def test_grid_has_a_width_axis_inside_each_model():
    points = list(bench.grid(["mlp", "cnn_tiny"], [8, 16], ["float32"], ["pmap"], ["synthetic"], [1], widths=[1, 4]))
    assert [(p.model, p.width, p.batch_size) for p in points] == [
        (m, w, b) for m in ("mlp", "cnn_tiny") for w in (1, 4) for b in (8, 16)
    ]
    assert {p.data for p in points} == {"synthetic"}
    assert [p.width for p in bench.grid(["mlp"], [8], ["float32"], ["pmap"], ["device"], [1])] == [1]
    own = bench.grid(["mlp", "cnn"], [8], ["float32"], ["pmap"], ["device"], [1], widths={"mlp": [1, 32], "cnn": [2]})
    assert [(p.model, p.width) for p in own] == [("mlp", 1), ("mlp", 32), ("cnn", 2)]


def test_widths_for_every_model_or_each_its_own():
    from harness.bench_cli import _widths

    assert _widths(None, ["mlp", "cnn"]) == {"mlp": [1], "cnn": [1]}
    assert _widths(["1,4"], ["mlp", "cnn"]) == {"mlp": [1, 4], "cnn": [1, 4]}
    assert _widths(["mlp=1,8,32", "cnn=1,2"], ["mlp", "cnn"]) == {"mlp": [1, 8, 32], "cnn": [1, 2]}
    assert _widths(["cnn=4"], ["mlp", "cnn"]) == {"mlp": [1], "cnn": [4]}  # a model without: width 1


@pytest.mark.parametrize("kind", ["pmap", "jit"])
def test_synthetic_data_is_made_on_the_devices_once(monkeypatch, kind):
    """A synthetic point needs no data on the host: one batch generated on the devices (deterministic), the same
    placed indices every dispatch, nothing sent per step."""
    from harness import parallel

    point = bench.resolve(dataclasses.replace(TINY, parallel=kind, data="synthetic", steps_per_dispatch=2))
    runner = bench._Runner(point)
    assert runner.host is None and runner.n == point.batch_size
    first = runner.args()
    sent = []
    for name in ("replicate", "shard_indices", "shard_batch"):
        monkeypatch.setattr(parallel.Parallel, name, lambda *a, name=name: sent.append(name))
    assert all(a is b for a, b in zip(runner.args(), first, strict=True)) and sent == []
    images = np.asarray(runner.data["image"]).reshape(-1, point.batch_size, 28, 28, 1)[0]  # pmap: copy 0
    np.testing.assert_array_equal(images, np.asarray(bench.synthetic_examples(point.batch_size)["image"]))
    assert images.dtype == np.uint8 and len(np.unique(images)) > 200  # random bytes, not a constant
    indices = np.asarray(first[1])  # [steps, batch]; pmap's: [devices, steps, batch / devices]
    indices = indices.transpose(1, 0, 2).reshape(2, -1) if kind == "pmap" else indices
    assert indices.tolist() == [list(range(16))] * 2  # each step: every example of the batch


def test_synthetic_points_measure_without_any_dataset(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("HARNESS_OFFLINE", "1")
    point = dataclasses.replace(TINY, data="synthetic", batch_size=24, num_devices=1, steps_per_dispatch=3)
    f = bench.measure(point, windows=5, dispatches_per_window=1, warmup=1)
    assert f["examples_per_sec"] > 0 and f["loss_finite"] and f["flops_per_example"] > 0
    assert f["params"] == _mlp_tiny_params(1) and not (tmp_path / "empty").exists()


def test_widths_rows_carry_the_width_and_parameter_count(capsys, tmp_path):
    """`harness bench --widths 1,3`: one row per width, each with its width, exact parameter count and FLOPs per
    example (rising with the width), on synthetic data; printed lines name them too."""
    argv = ["run", "--models", "mlp_tiny", "--widths", "1,3", "--batch-sizes", "16", "--data", "synthetic"]
    rc, out, err = bench_cli_run(capsys, *argv, "--windows", "5", "--dispatches", "1", "--ledger", str(tmp_path))
    assert (rc, err) == (0, "")
    rows = ledger.read(tmp_path)
    assert [(r["point"]["width"], r["point"]["data"], r["figures"]["params"]) for r in rows] == [
        (1, "synthetic", _mlp_tiny_params(1)),
        (3, "synthetic", _mlp_tiny_params(3)),
    ]
    narrow, wide = (r["figures"]["flops_per_example"] for r in rows)
    assert 2.5 * narrow < wide < 3.5 * narrow  # FLOPs grow with the hidden layer, about 3×
    lines = [line for line in out.splitlines() if line.startswith("mlp_tiny")]
    assert len(lines) == 2 and "w1 " in lines[0] and "12.7k params" in lines[0]
    assert "w3 " in lines[1] and "38.2k params" in lines[1]


FAKE_PEER = """
from harness.bench import summarize

NAME = "fake-peer"


def available():
    return True, ""


def measure(model, batch_size, width=1, windows=7, dispatches_per_window=8):
    return {**summarize([0.01] * windows, batch_size), "seen": [model, width, batch_size, dispatches_per_window]}
"""


def test_peers_run_at_the_same_widths_and_batch_sizes(monkeypatch, capsys, tmp_path):
    """`--peers` times each peer at every model, width and batch size of the harness rows (a fake peer here: torch
    and keras are optional extras)."""
    import argparse

    from harness import bench_cli, peers

    (tmp_path / "fake.py").write_text(FAKE_PEER)
    monkeypatch.setattr(peers, "PEERS_DIR", tmp_path)
    args = argparse.Namespace(
        models="mlp,cnn", widths=["mlp=1,4", "cnn=2"], batch_sizes="16,32", windows=5, dispatches=1
    )
    rows = bench_cli._peer_rows(args)
    seen = [tuple(r["figures"]["seen"]) for r in rows]
    assert seen == [
        ("mlp", 1, 16, 1),
        ("mlp", 1, 32, 1),
        ("mlp", 4, 16, 1),
        ("mlp", 4, 32, 1),
        ("cnn", 2, 16, 1),
        ("cnn", 2, 32, 1),
    ]
    assert [(r["point"]["model"], r["point"]["width"], r["point"]["batch_size"]) for r in rows] == [s[:3] for s in seen]
    assert {r["framework"] for r in rows} == {"fake-peer"} and all(ledger.validate(r) == [] for r in rows)
    assert "peer fake-peer          mlp    w4   b32" in capsys.readouterr().out


def test_peer_rows_are_credited_with_the_models_flops_by_harnesss_count(monkeypatch, capsys, tmp_path):
    """A peer's row at a point harness measured in the same run gets harness's FLOPs per example for that model and
    batch, and its achieved FLOP/s, MFU and ceiling fraction scaled by its speed; other points stay without."""
    import argparse

    from harness import bench_cli, peers

    (tmp_path / "fake.py").write_text(FAKE_PEER)
    monkeypatch.setattr(peers, "PEERS_DIR", tmp_path)
    args = argparse.Namespace(models="mlp", widths=[], batch_sizes="16,32", windows=5, dispatches=1)
    ours_figures = {"examples_per_sec": 3200.0, "flops_per_example": 1000.0, "achieved_flops_per_sec": 3.2e6}
    ours_figures.update(mfu=0.5, ceiling_fraction=0.25)
    point = {"model": "mlp", "width": 1, "batch_size": 16, "dtype": "float32"}
    ours = [{"kind": "throughput", "point": point, "figures": ours_figures}]
    credited, plain = bench_cli._peer_rows(args, ours)
    f = credited["figures"]  # the fake peer runs batch 16 at 1,600 ex/s: half of harness's speed
    assert f["examples_per_sec"] == pytest.approx(1600.0) and f["flops_per_example"] == 1000.0
    assert (f["achieved_flops_per_sec"], f["mfu"], f["ceiling_fraction"]) == pytest.approx((1.6e6, 0.25, 0.125))
    assert "mfu" not in plain["figures"] and "flops_per_example" not in plain["figures"]
    assert "b16            1,600 ex/s  MFU 25.0%\n" in capsys.readouterr().out


CRASHING_PEER = """
import os
import sys

NAME = "crashing-peer"


def available():
    return True, ""


def measure(model, batch_size, width=1, windows=7, dispatches_per_window=8):
    if batch_size == 16:
        raise ValueError("no kernel for this shape\\nsecond line")
    print("chatter on stdout", flush=True)
    sys.stderr.write("Fatal Python error: Segmentation fault\\n")
    sys.stderr.flush()
    os.abort()
"""


def test_a_peer_that_fails_or_crashes_is_one_line_and_the_others_still_run(monkeypatch, capsys, tmp_path):
    """Each peer runs in a process of its own (TensorFlow and PyTorch crash in one): an error at one point is one
    line and the next point is still measured; a process that dies ends that peer only, in one line with its last
    words, and the next peer's rows are kept."""
    import argparse

    from harness import bench_cli, peers

    (tmp_path / "a_crashing.py").write_text(CRASHING_PEER)
    (tmp_path / "b_fake.py").write_text(FAKE_PEER)
    monkeypatch.setattr(peers, "PEERS_DIR", tmp_path)
    args = argparse.Namespace(models="mlp", widths=[], batch_sizes="16,32,64", windows=5, dispatches=1)
    rows = bench_cli._peer_rows(args)
    assert [(r["framework"], r["point"]["batch_size"]) for r in rows] == [("fake-peer", b) for b in (16, 32, 64)]
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("peer crashing-peer")]
    assert lines[0].startswith("peer crashing-peer: failed at {'model': 'mlp', 'batch_size': 16")
    assert lines[0].endswith("(ValueError: no kernel for this shape)")
    assert lines[1].startswith("peer crashing-peer: failed (its process ended with status -6: ")
    assert "Segmentation fault" in lines[1] and len(lines) == 2 and "Traceback" not in out + err


def test_bad_points_are_refused():
    with pytest.raises(ConfigError, match="allowed: device, host"):
        bench.measure(dataclasses.replace(TINY, data="disk"))
    with pytest.raises(ConfigError, match="divisible by the device count"):
        bench.measure(dataclasses.replace(TINY, batch_size=12))
    with pytest.raises(ConfigError, match="at least 5 timing windows"):
        bench.measure(TINY, windows=3)


def test_mfu_is_na_when_the_cpu_peak_is_unknown(monkeypatch):
    """A CPU without a known FLOP/cycle (here: /proc/cpuinfo unreadable) gives no MFU, and the row is still valid."""
    monkeypatch.setattr(peaks, "cpu_info", lambda: peaks.CpuInfo(cores=2))
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
        (["run", "--widths", "0"], "--widths='0': expected comma-separated positive integers (1,4,16) or MODEL="),
        (["run", "--widths", "1,-4"], "--widths='1,-4': expected comma-separated positive integers"),
        (["run", "--widths", "2x"], "--widths='2x': expected comma-separated positive integers"),
        (["sweep", "--widths", ","], "--widths=','"),
        (["run", "--widths", "mlp=0"], "--widths='mlp=0': expected comma-separated positive integers"),
        (["run", "--widths", "resnet=2"], "--widths='resnet=2': 'resnet' is not one of --models (mlp, cnn)"),
        (["run", "--widths", "1,2", "--widths", "cnn=4"], "--widths='cnn=4': cnn already has widths 1,2"),
        (["run", "--data", "dataset"], "--data='dataset': allowed: device, host, synthetic"),
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


def test_the_trace_holds_the_steps_not_the_ceiling_calibration(monkeypatch, tmp_path):
    """Issue 22 item 9: `bench --trace` calibrates the measured ceiling (large matmuls, once per process) before the
    trace starts, so the first point's top operations are its train step's."""
    import argparse
    import contextlib

    from harness import bench_cli, ceiling, profiling

    events = []
    rates = {"float32_flops_per_sec": 1e11, "bfloat16_flops_per_sec": 1e11, "bytes_per_sec": 1e10}
    monkeypatch.setattr(ceiling, "calibrate", lambda: events.append("calibrate") or {"per": "cpu", **rates})

    @contextlib.contextmanager
    def trace(directory):
        events.append("trace")
        yield directory

    monkeypatch.setattr(profiling, "trace", trace)
    monkeypatch.setattr(profiling, "summary_lines", lambda directory, n: [])
    ceiling.measured.cache_clear()
    try:
        bench_cli._measured(TINY, argparse.Namespace(trace=str(tmp_path), windows=5, dispatches=1))
    finally:
        ceiling.measured.cache_clear()  # the fake calibration stays in this test
    assert events == ["calibrate", "trace"]
