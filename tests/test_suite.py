"""`harness bench suite` and benchmarks/accelerator.sh: the standard grid, its budget, the script end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness import bench, suite
from harness.config import ALLOWED

REPO = Path(__file__).resolve().parent.parent


def test_the_grid_has_every_strategy_the_scale_axis_and_device_multiples():
    parts = {p.name: p for p in suite.parts(suite.ACCELERATOR, ALLOWED["parallel"], devices=8)}
    assert list(parts) == ["strategies", "scale", "batch", "data"]
    assert [p.parallel for p in parts["strategies"].points] == list(ALLOWED["parallel"])
    scale = parts["scale"].points
    assert {(p.model, p.dtype, p.width) for p in scale} == {
        (m, d, w) for m in ("mlp", "cnn") for d in ("float32", "bfloat16") for w in (1, 4, 16)
    }
    assert all(p.data == "synthetic" and p.batch_size == 1024 for p in scale)
    assert parts["batch"].sweep and [p.data for p in parts["data"].points] == list(bench.DATA_MODES)
    odd = suite.parts(suite.ACCELERATOR, ("pmap",), devices=3)
    assert all(p.batch_size % 3 == 0 for part in odd for p in part.points)


def test_points_left_when_the_budget_is_spent_are_skipped_and_listed(monkeypatch):
    now = [0.0]
    measured = []

    def fake_measure(point, windows, dispatches):
        measured.append(point)
        now[0] += 10.0
        return {"examples_per_sec": 1.0}

    monkeypatch.setattr(suite.bench, "measure", fake_measure)
    monkeypatch.setattr(suite.ledger, "make_row", lambda kind, point, figures: {"kind": kind, **figures})
    budget = suite.Budget(25.0, clock=lambda: now[0])
    part = suite.Part("strategies", tuple(bench.Point("mlp_tiny", 16, parallel=p) for p in ("pmap", "jit", "pmap")))
    lines = []
    rows = suite._measure_part(part, suite.QUICK, budget, lambda p, f: None, lines.append)
    assert len(measured) == 3 and len(rows) == 3  # 0 s, 10 s, 20 s: all started inside the 25 s
    assert lines == [  # it speaks: which point, and the seconds so far
        f"strategies: measuring mlp_tiny w1 b16 float32 {p} device ×1  ({t} s so far)"
        for p, t in (("pmap", 0), ("jit", 10), ("pmap", 20))
    ]
    part2 = suite.Part("data", (bench.Point("mlp_tiny", 16),))
    assert suite._measure_part(part2, suite.QUICK, budget, lambda p, f: None, lines.append) == []
    assert budget.skipped == ["data: mlp_tiny w1 b16 float32"]


def test_the_accelerator_script_runs_the_reduced_suite_end_to_end_on_cpu(tmp_path, tiny_data_dir):
    ledger = tmp_path / "ledger"
    env = {**os.environ, "PYTHON": sys.executable, "TFDS_DATA_DIR": tiny_data_dir}
    p = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "accelerator.sh"), "--no-install", "--quick", "--ledger", str(ledger)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = [json.loads(line) for line in (ledger / "cpu.jsonl").read_text().splitlines()]
    parts = {r["figures"].get("suite") for r in rows}
    assert parts == {"strategies", "scale", "batch", "data", "tta"}, parts
    tta = [r for r in rows if r["kind"] == "time_to_accuracy"]
    assert len(tta) == 1 and 0 < tta[0]["figures"]["runs"][0]["accuracy"] <= 1  # trained and evaluated
    assert all(r["fingerprint"]["platform"] == "cpu" for r in rows)
    assert (ledger / "LEADERBOARD.md").is_file() and (ledger / "roofline.png").is_file()
    assert "accelerator.sh: jax" in p.stdout and "budget ran out" not in p.stdout
