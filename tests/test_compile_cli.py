"""``harness compile`` and ``harness bench compile``: one line per point, one-line errors, predicted ledger rows."""

from __future__ import annotations

import json

import pytest

from harness import cli, ledger, topology

libtpu = pytest.mark.skipif(topology.libtpu_version() is None, reason="libtpu is not installed (harness[tpu])")


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@libtpu
def test_compile_prints_the_slice_the_plan_and_one_line_of_figures(capsys):
    code, out, err = _run(capsys, "compile", "--topology", "v5e-4", "--config", "smoke", "--config.batch_size=64")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("v5e-4 (v5e:2x2): 4 TPU v5 lite devices on 4 chips, 1 host; libtpu ")
    assert lines[1] == "plan: pmap on 4 tpu devices, 1 micro-batch, 1 step per dispatch, float32"
    assert len(lines) == 3 and lines[2].startswith("smoke batch 64: compiled in ")
    for part in ("of 16.00 GiB HBM, fits", "arguments", "temporaries", "outputs", "FLOP", "ms/step", "ex/s", "MFU"):
        assert part in lines[2]


@libtpu
def test_compile_fit_searches_the_largest_batch(capsys):
    code, out, err = _run(
        capsys, "compile", "--topology", "v5e-1", "--config", "smoke", "--fit", "--max-batch", "1024", "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["fit"] == {"largest": 1024, "first_too_big": None, "capped": True}
    assert result["slice"]["topology"] == "v5e:1x1" and result["figures"]["fits"]


@libtpu
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--topology", "v9-8"], "--topology 'v9-8': not a TPU slice"),
        (["--topology", "v5e:3x3"], "--topology v5e:3x3: libtpu cannot describe v5e:3x3"),
        (["--topology", "v5e-8", "--config.batch_size=100"], "must be divisible by the device count (8)"),
        (["--topology", "v5e-1", "--config.num_devices=2"], "config.num_devices=2: v5e-1 has 1 device(s)"),
        (["--topology", "v5e-1", "--max-batch", "-1"], "--max-batch=-1"),
        (
            [
                "--topology",
                "v5e-1",
                "--config",
                "fashion_mnist_mlp",
                "--config.width=64",
                "--config.batch_size=1048576",
            ],
            "v5e-1 fashion_mnist_mlp batch 1048576: did not compile (RESOURCE_EXHAUSTED",
        ),
    ],
)
def test_compile_errors_are_one_line_exit_2(capsys, args, message):
    code, _out, err = _run(capsys, "compile", *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("harness: error: ") and message in err, err


@libtpu
def test_bench_compile_writes_predicted_rows_naming_libtpu_and_the_slice(capsys, tmp_path):
    code, out, err = _run(
        capsys,
        "bench",
        "compile",
        "--topologies",
        "v5e-1,v2-8",
        "--models",
        "mlp_tiny",
        "--dtypes",
        "float32,bfloat16",
        "--ledger",
        str(tmp_path),
    )
    assert code == 0, err
    rows = ledger.read(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tpu-v2-predicted.jsonl", "tpu-v5-lite-predicted.jsonl"]
    assert len(rows) == 4 and {r["kind"] for r in rows} == {"predicted"}
    by_slice = {(r["fingerprint"]["accelerator"], r["point"]["dtype"]): r for r in rows}
    v2 = by_slice[("v2-8", "bfloat16")]
    assert v2["fingerprint"]["topology"] == "v2:2x2" and v2["fingerprint"]["chips"] == 4
    assert v2["fingerprint"]["libtpu"] == topology.libtpu_version() and v2["fingerprint"]["platform"] == "tpu"
    assert v2["point"]["batch_size"] == 128 and v2["figures"]["plan"]["num_devices"] == 8
    assert "ceiling" not in v2["fingerprint"]  # nothing ran here: no measured ceiling
    assert out.count("compiled in") == 4


@libtpu
def test_bench_compile_fit_marks_the_largest_batch(capsys, tmp_path):
    args = ["bench", "compile", "--topologies", "v5e-1", "--models", "mlp_tiny", "--fit", "--max-batch", "512"]
    code, out, err = _run(capsys, *args, "--ledger", str(tmp_path))
    assert code == 0, err
    rows = sorted(ledger.read(tmp_path), key=lambda r: r["point"]["batch_size"])
    assert [r["point"]["batch_size"] for r in rows] == [128, 256, 512]
    assert "fit" not in rows[0]["figures"] and rows[-1]["figures"]["fit"]["largest"] == 512
    assert "largest batch that fits ≥ 512" in out


def test_bench_report_renders_predicted_rows_into_readme(capsys, tmp_path):
    from test_predicted import FIT, _row

    ledger.append([_row(128, 1e5), _row(61440, 2e6, FIT)], tmp_path / "results")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- predicted-tpu:begin -->\nold\n<!-- predicted-tpu:end -->\n")
    args = ["bench", "report", "--ledger", str(tmp_path / "results"), "--out", str(tmp_path / "out")]
    code, _, err = _run(capsys, *args, "--readme", str(readme))
    assert code == 2 and "no '<!-- predicted-tpu:begin (rendered by" in err  # the markers must be the exact ones
    assert not (tmp_path / "out").exists()  # refused before anything was written
    from harness import predicted

    readme.write_text(f"# x\n{predicted.README_BEGIN}\nold\n{predicted.README_END}\n")
    code, _, err = _run(capsys, *args, "--readme", str(readme))
    assert code == 0, err
    assert "61,440" in readme.read_text() and "old" not in readme.read_text()
    assert predicted.TITLE in (tmp_path / "out" / "LEADERBOARD.md").read_text()


@libtpu
def test_bench_compile_keeps_a_row_for_a_point_whose_first_batch_does_not_fit(capsys, tmp_path):
    args = ["bench", "compile", "--topologies", "v5e-1", "--models", "mlp", "--widths", "64", "--fit"]
    code, out, err = _run(
        capsys, *args, "--batch-sizes", "1048576", "--max-batch", "2097152", "--ledger", str(tmp_path)
    )
    assert code == 0, err
    (row,) = ledger.read(tmp_path)
    assert row["figures"]["fits"] is False and "RESOURCE_EXHAUSTED" in row["figures"]["error"]
    assert row["figures"]["fit"] == {"largest": None, "first_too_big": 1048576, "capped": False, "tried": [1048576]}
    assert "no batch from 1048576 fits" in out


@libtpu
def test_bench_compile_starts_a_slice_with_many_devices_at_a_multiple_of_them(capsys, tmp_path):
    args = ["bench", "compile", "--topologies", "v5e-16", "--models", "mlp_tiny", "--batch-sizes", "40"]
    code, out, err = _run(capsys, *args, "--ledger", str(tmp_path))
    assert code == 0, err
    assert "v5e-16: batch 40 is not a multiple of its 16 devices; starting at 48" in out
    (row,) = ledger.read(tmp_path)
    assert row["point"]["batch_size"] == 48 and row["fingerprint"]["hosts"] == 4


@libtpu
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "host"], "--data=host: bench compile compiles training's device-resident data (device)"),
        (["--micro-batches", "3"], "v5e-1 mlp_tiny w1 b128: config.micro_batches=3: must be 0 (auto) or divide"),
        (["--fit", "--max-batch", "64"], "--max-batch 64: below the batch the search starts from (128"),
        (["--topologies", "v5e-1,v9"], "--topology 'v9': not a TPU slice"),
    ],
)
def test_bench_compile_refuses_a_bad_grid_before_compiling_anything(capsys, tmp_path, args, message):
    base = ["bench", "compile", "--topologies", "v5e-1", "--models", "mlp_tiny", "--ledger", str(tmp_path)]
    code, out, err = _run(capsys, *base, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "compiled in" not in out and not list(tmp_path.iterdir())


@libtpu
def test_bench_compile_runs_the_points_steps_per_dispatch(capsys, tmp_path):
    args = ["bench", "compile", "--topologies", "v5e-1", "--models", "mlp_tiny", "--steps-per-dispatch", "4"]
    code, out, err = _run(capsys, *args, "--ledger", str(tmp_path))
    assert code == 0, err
    (row,) = ledger.read(tmp_path)
    assert row["figures"]["plan"]["steps_per_dispatch"] == 4 and "train_steps" in row["figures"]["memory"]
    assert "plan: v5e-1: pmap on 1 tpu device, 1 micro-batch, 4 steps per dispatch, float32" in out


def test_bench_report_refuses_misordered_markers_or_a_ledger_without_predictions(capsys, tmp_path):
    from test_predicted import _measured, _row

    from harness import predicted

    readme = tmp_path / "README.md"
    args = ["bench", "report", "--out", str(tmp_path / "out"), "--readme", str(readme)]
    ledger.append([_measured(128, 5e4)], tmp_path / "measured")
    readme.write_text(f"{predicted.README_BEGIN}\n{predicted.README_END}\n")
    code, _, err = _run(capsys, *args, "--ledger", str(tmp_path / "measured"))
    assert code == 2 and "holds no predicted rows" in err
    ledger.append([_row(128, 1e5)], tmp_path / "predicted")
    readme.write_text(f"{predicted.README_END}\n{predicted.README_BEGIN}\n")
    code, _, err = _run(capsys, *args, "--ledger", str(tmp_path / "predicted"))
    assert code == 2 and "not in order" in err
    assert readme.read_text() == f"{predicted.README_END}\n{predicted.README_BEGIN}\n"
