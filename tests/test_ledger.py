"""The ledger on a fixture: append/read, schema, leaderboard, plots, regression check, and the CLI."""

import copy
import json
from pathlib import Path

import pytest
from test_explore import assert_picture
from test_peaks import ZEN4_EPYC

from harness import ceiling, cli, ledger, peaks

FP = {
    "platform": "cpu",
    "device_kind": "cpu",
    "device_count": 8,
    "process_count": 1,
    "jax": "0.10.2",
    "jaxlib": "0.10.2",
    "flax": "0.12.8",
    "optax": "0.2.8",
    "xla_flags": "",
    "cpu_model": "Xeon",
    "cpu_cores": 2,
    "ceiling": {"per": "cpu", "float32_flops_per_sec": 2e11, "bfloat16_flops_per_sec": 1e11, "bytes_per_sec": 4e10},
}


def _row(model="mlp", bs=128, eps=1000.0, data="device"):
    point = {
        "model": model,
        "batch_size": bs,
        "dtype": "float32",
        "parallel": "pmap",
        "data": data,
        "steps_per_dispatch": 1,
        "num_devices": 0,
    }
    step = bs / eps
    figures = {
        "examples_per_sec": eps,
        "examples_per_sec_per_device": eps / 8,
        "step_seconds_median": step,
        "step_seconds_p10": step * 0.9,
        "step_seconds_p90": step * 1.1,
        "mfu": 0.1,
        "ceiling_fraction": 0.25,
        "compile_seconds": 1.0,
        "devices": 8,
        "arithmetic_intensity": 10.0 if model == "mlp" else 40.0,
        "achieved_flops_per_sec": eps * 1e6,
        "peak_flops_per_device": 3.2e11,
        "host_peak_rss_bytes": 3 * 2**30,
    }
    return ledger.make_row("throughput", point, figures, fp=copy.deepcopy(FP))


@pytest.fixture
def fixture_ledger(tmp_path):
    rows = [_row(bs=64, eps=800), _row(bs=128, eps=1000), _row(bs=256, eps=900), _row("cnn", 128, 50.0)]
    ledger.append(rows, tmp_path)
    return tmp_path


def test_append_read_and_schema(fixture_ledger):
    rows = ledger.read(fixture_ledger)
    assert len(rows) == 4 and (fixture_ledger / "cpu.jsonl").is_file()
    bad = dict(rows[0], schema=99)
    assert ledger.validate(bad) and ledger.validate({"kind": "x"})
    with (fixture_ledger / "cpu.jsonl").open("a") as f:
        f.write(json.dumps(bad) + "\n")
    assert len(ledger.read(fixture_ledger)) == 4  # rows of another schema are not mixed in


def test_a_garbage_ledger_line_is_skipped_with_a_warning(fixture_ledger, capsys):
    with (fixture_ledger / "cpu.jsonl").open("a") as f:
        f.write("{not json\n[1, 2]\n")
    assert len(ledger.read(fixture_ledger)) == 4
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {fixture_ledger / 'cpu.jsonl'}, line 5: not JSON, skipped"
    ]


def test_leaderboard_picks_the_best_batch(fixture_ledger):
    table = ledger.leaderboard(ledger.read(fixture_ledger))
    mlp = next(line for line in table.splitlines() if "| mlp |" in line)
    assert "| 1,000 |" in mlp and "| 128 |" in mlp and "| 10.0% | 25.0% | 10.0 | 3.00 GiB (host RSS) |" in mlp
    assert "Xeon, 2 cores" in mlp


def test_plots(fixture_ledger, tmp_path):
    paths = ledger.plots(ledger.read(fixture_ledger), tmp_path / "plots")
    assert [p.name for p in paths] == ["throughput_vs_batch.png", "step_time_spread.png", "roofline.png"]
    for path in paths:
        assert_picture(path)


def test_the_roofline_of_a_tiny_ledger(fixture_ledger):
    from harness import roofline

    rows = ledger.read(fixture_ledger)
    panels = roofline.panels(rows, ledger._device_name)
    assert list(panels) == ["cpu × 8 (Xeon, 2 cores), 8 device(s)"] and len(panels[next(iter(panels))]) == 4
    compute, memory = roofline.ceilings(rows)
    assert compute == {("float32", "datasheet"): 3.2e11, ("float32", "measured"): 2e11} and memory == {"measured": 4e10}


def test_committed_rows_still_load_and_report(tmp_path):
    """Rows written before the roofline, ceiling and memory figures existed: read, reported, "n/a" where missing."""
    committed = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "cpu.jsonl"
    lines = committed.read_text().splitlines()  # harness's rows committed before those figures (peers have none)
    old = [line for line in lines if '"arithmetic_intensity"' not in line and '"framework": "jax"' in line]
    (tmp_path / "cpu.jsonl").write_text("\n".join(old) + "\n")
    rows = ledger.read(tmp_path)
    assert len(rows) == len(old) > 10
    header, _, *lines = [[c.strip() for c in line.split("|")] for line in ledger.leaderboard(rows).splitlines()[:6]]
    for cells in lines:
        assert cells[header.index("of ceiling")] == cells[header.index("FLOP/byte")] == "n/a"
        assert cells[header.index("MFU")].endswith("%")  # what the row stored then
    for path in ledger.plots(rows, tmp_path / "plots"):
        assert_picture(path)


def test_the_fingerprint_carries_the_cpu_and_the_measured_ceiling(monkeypatch):
    calibration = ceiling.calibrate(matmul_size=64, copy_elements=2**12)
    monkeypatch.setattr(ceiling, "measured", lambda: calibration)
    monkeypatch.setattr(peaks, "cpu_info", lambda: peaks.parse_cpuinfo(ZEN4_EPYC, cores=2))
    fp = ledger.fingerprint()
    assert fp["ceiling"] == calibration and fp["ceiling"]["float32_flops_per_sec"] > 0
    assert (fp["cpu_vendor"], fp["cpu_family"], fp["cpu_model_number"]) == ("AuthenticAMD", 25, 17)
    assert fp["cpu_microarchitecture"] == "Zen 3/Zen 4" and fp["cpu_features"] == [
        "avx2",
        "fma",
        "avx512f",
        "avx512_bf16",
    ]


def test_compare_flags_a_drop_beyond_tolerance(fixture_ledger):
    baseline = ledger.read(fixture_ledger)
    problems, matched = ledger.compare([_row(bs=128, eps=950)], baseline, 0.1)
    assert matched == 1 and problems == []
    problems, _ = ledger.compare([_row(bs=128, eps=700)], baseline, 0.1)
    assert len(problems) == 1 and "30% below the baseline 1,000" in problems[0]
    other = _row(bs=128, eps=10)
    other["fingerprint"]["cpu_model"] = "another CPU"
    assert ledger.compare([other], baseline, 0.1) == ([], 0)  # other machines are not compared


def test_compare_matches_rows_written_before_the_width_axis_at_width_1(fixture_ledger):
    baseline = ledger.read(fixture_ledger)  # points without "width"
    fresh = _row(bs=128, eps=700)
    fresh["point"]["width"] = 1
    problems, matched = ledger.compare([fresh], baseline, 0.1)
    assert matched == 1 and "30% below the baseline 1,000" in problems[0]
    fresh["point"]["width"] = 2  # another model size: no baseline
    assert ledger.compare([fresh], baseline, 0.1) == ([], 0)


def test_cli_run_report_check(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "bench",
        "--models",
        "mlp_tiny",
        "--batch-sizes",
        "16",
        "--windows",
        "5",
        "--dispatches",
        "2",
        "--ledger",
        str(tmp_path / "l"),
    ]
    assert cli.main(args) == 0
    assert "appended to" in capsys.readouterr().out
    assert cli.main(["bench", "report", "--ledger", str(tmp_path / "l"), "--out", str(tmp_path / "r")]) == 0
    assert "mlp_tiny" in (tmp_path / "r" / "LEADERBOARD.md").read_text()
    assert cli.main(["bench", "check", *args[1:], "--tolerance", "0.9"]) == 0
    assert "1 with a baseline: ok" in capsys.readouterr().out
    path = tmp_path / "l" / "cpu.jsonl"
    row = json.loads(path.read_text().splitlines()[0])
    row["figures"]["examples_per_sec"] *= 1000  # a baseline this machine cannot reach
    path.write_text(json.dumps(row) + "\n")
    assert cli.main(["bench", "check", *args[1:], "--tolerance", "0.2"]) == 1
    assert "REGRESSION" in capsys.readouterr().out


def test_cli_bad_bench_arguments_are_one_line(capsys):
    assert cli.main(["bench", "--models", "resnet"]) == 2
    assert "allowed: mlp, cnn" in capsys.readouterr().err
    assert cli.main(["bench", "--windows", "2"]) == 2


def test_peers_say_whether_they_run_here_in_their_own_process():
    from harness import peers

    answers = {m.NAME: next(peers.run(m, [])) for m in peers.modules()}
    assert set(answers) == {"pytorch-eager", "keras3-tensorflow"}
    assert all(a["available"] or "pip install" in a["why"] or "KERAS_BACKEND" in a["why"] for a in answers.values())


def test_pytorch_peer_measures_when_installed():
    pytest.importorskip("torch", reason="the PyTorch peer is an optional extra: pip install -e '.[peers]'")
    from harness import peers

    torch_peer = next(m for m in peers.modules() if m.NAME == "pytorch-eager")
    call = peers.measure_call("mlp", 32, windows=5, dispatches_per_window=2)
    first, answer = peers.run(torch_peer, [call])
    f = answer["figures"]
    row = ledger.make_row(
        "throughput", {"model": "mlp", "batch_size": 32, "peer": "pytorch-eager"}, f, framework="pytorch-eager"
    )
    assert first["available"] and ledger.validate(row) == [] and f["examples_per_sec"] > 0


def test_check_with_tta_fails_when_a_seed_misses_the_bound(tmp_path, capsys, tiny_data_dir):
    common = [
        "--models",
        "mlp_tiny",
        "--batch-sizes",
        "16",
        "--windows",
        "5",
        "--dispatches",
        "1",
        "--ledger",
        str(tmp_path),
        "--config",
        "smoke",
        "--seeds",
        "0",
        "--tta",
    ]
    over = [
        f"--config.data_dir={tiny_data_dir}",
        "--config.model=mlp_tiny",
        "--config.batch_size=64",
        "--config.num_epochs=2",
    ]
    assert cli.main(["bench", "check", *common, "--target", "0.3", *over]) == 0
    frozen = [*over, "--config.learning_rate=1e-9"]  # a model that cannot learn never reaches the bound
    assert cli.main(["bench", "check", *common, "--target", "0.9", *frozen]) == 1
    assert "0/1 seeds reached 0.9" in capsys.readouterr().out


def test_tried_rows_turn_a_sweep_into_throughput_and_out_of_memory_rows(monkeypatch):
    """One throughput row per measured size (shown), one out_of_memory row where memory ran out (said), the extra
    figures in both."""
    from harness import bench

    monkeypatch.setattr(ledger, "fingerprint", lambda: FP)
    small, big = bench.Point("mlp", 16), bench.Point("mlp", 32)
    measured = _row(bs=16)["figures"]
    tried = [
        {"point": small, "figures": measured},
        {"point": big, "figures": None, "stopped": "out of memory", "error": "RESOURCE_EXHAUSTED: 9 GiB"},
    ]
    shown, said = [], []
    rows = ledger.tried_rows(tried, lambda p, f: shown.append(p), said.append, {"suite": "sweep"})
    assert [r["kind"] for r in rows] == ["throughput", "out_of_memory"] and shown == [small]
    assert rows[0]["figures"] == {**measured, "suite": "sweep"} and rows[1]["point"]["batch_size"] == 32
    assert rows[1]["figures"] == {"stopped": "out of memory", "error": "RESOURCE_EXHAUSTED: 9 GiB", "suite": "sweep"}
    assert said == ["batch 32: out of memory, the sweep stops here (RESOURCE_EXHAUSTED: 9 GiB)"]


def test_the_commit_is_read_once_per_process(monkeypatch):
    """A grid that runs for an hour names the code it started with, not commits made meanwhile in the checkout."""
    import subprocess

    from harness import ledger as ledger_module

    ledger_module.git_commit.cache_clear()
    first = ledger_module.git_commit()
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("git asked again"))
    assert ledger_module.git_commit() == first
    ledger_module.git_commit.cache_clear()
