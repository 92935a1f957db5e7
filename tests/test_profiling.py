"""Traces on demand: step ranges, the loop's trace action, the top-operations summary, a real trace of training."""

from __future__ import annotations

import contextlib
import gzip
import json

import jax
import pytest

from harness import config as config_lib
from harness import profiling, train
from harness.errors import ConfigError


@pytest.mark.parametrize(("text", "steps"), [("", None), ("3:5", (3, 5)), ("7:7", (7, 7))])
def test_step_ranges_parse(text, steps):
    assert profiling.parse_steps(text) == steps


@pytest.mark.parametrize("text", ["5:3", "0:2", "a:b", "7", ":4", "2:"])
def test_bad_step_ranges_are_one_line_errors_from_validation(text):
    c = config_lib.load("smoke", [f"profile_steps={text}"])
    with pytest.raises(ConfigError, match=r"config\.profile_steps=.*FIRST:LAST") as e:
        config_lib.validate(c, 1)
    assert "\n" not in str(e.value)


def _write_trace(directory, events):
    run = directory / "plugins" / "profile" / "2026_01_01_00_00_00"
    run.mkdir(parents=True)
    with gzip.open(run / profiling.TRACE_FILE, "wt") as f:
        json.dump({"traceEvents": events}, f)
    return run / profiling.TRACE_FILE


def test_top_ops_sum_each_operations_events_and_ignore_host_events(tmp_path):
    def op(name, ts, dur):
        return {"ph": "X", "name": name, "ts": ts, "dur": dur, "args": {"hlo_module": "jit_step", "hlo_op": name}}

    events = [op("dot", 0, 300.0), op("dot", 400, 500.0), op("fusion", 1000, 200.0)]
    events.append({"ph": "X", "name": "PjitFunction", "ts": 0, "dur": 9e6})
    events.append({"ph": "M", "name": "process_name", "args": {"name": "/host:CPU"}})
    ops = profiling.top_ops(_write_trace(tmp_path, events))
    assert [(op.name, op.count) for op in ops] == [("jit_step/dot", 2), ("jit_step/fusion", 1)]
    assert [op.seconds for op in ops] == pytest.approx([800e-6, 200e-6])
    assert [op.share for op in ops] == pytest.approx([0.8, 0.2])
    lines = profiling.summary_lines(tmp_path)
    assert "top 2 XLA operations" in lines[1] and "jit_step/dot" in lines[2] and "80.0%" in lines[2]


def test_an_operation_nested_in_another_counts_once_its_holder_keeps_only_its_own_time(tmp_path):
    def op(name, ts, dur, tid=1):
        return {"ph": "X", "name": name, "ts": ts, "dur": dur, "tid": tid, "args": {"hlo_module": "m", "hlo_op": name}}

    events = [op("while", 0, 100), op("dot", 10, 30), op("add", 50, 40), op("dot", 200, 30), op("dot", 20, 10, tid=2)]
    ops = {o.name: (round(o.seconds * 1e6), o.count) for o in profiling.top_ops(_write_trace(tmp_path, events))}
    assert ops == {"m/dot": (70, 3), "m/add": (40, 1), "m/while": (30, 1)}


def test_a_directory_without_a_trace_says_so(tmp_path):
    assert profiling.summary_lines(tmp_path) == [f"profile: no trace was written in {tmp_path}"]


def test_the_trace_covers_the_dispatches_holding_the_first_and_last_steps(monkeypatch, tmp_path):
    spans = []

    @contextlib.contextmanager
    def fake_trace(directory):
        spans.append(["start"])
        yield directory
        spans[-1].append("stop")

    monkeypatch.setattr(profiling, "trace", fake_trace)
    lines = []
    p = profiling.Profile((6, 9), tmp_path, lines.append)
    started_at = None
    for first in range(1, 17, 4):  # dispatches of 4 steps: 1-4, 5-8, 9-12, 13-16
        p.before(first, 4)
        if spans and started_at is None:
            started_at = first
        p.after(first + 3, jax.numpy.zeros(()))
    assert started_at == 5 and spans == [["start", "stop"]] and p.done
    assert lines == [f"profile: no trace was written in {tmp_path}"]
    p.close()  # already closed: nothing more
    assert len(lines) == 1


def test_training_writes_a_trace_of_the_asked_steps_and_prints_its_top_operations(tiny_config, tmp_path):
    tiny_config.profile_steps, tiny_config.steps_per_dispatch = "2:3", 1
    lines = []
    train.train_and_evaluate(tiny_config, tmp_path, print_fn=lines.append)
    found = profiling.latest_trace(tmp_path / "profile")
    assert found is not None
    ops = profiling.top_ops(found)
    assert ops and abs(sum(op.share for op in ops) - 1.0) < 0.5  # real XLA:CPU per-operation events
    assert any(line.startswith("profile: top") for line in lines), lines
    with gzip.open(found, "rt") as f:
        events = [e for e in json.load(f)["traceEvents"] if "hlo_op" in (e.get("args") or {})]
    runs = {(e["args"]["hlo_module"], e["args"].get("run_id")) for e in events}
    assert len(runs) == 2, "\n".join(lines)  # the dispatches of steps 2 and 3 and nothing else (no eval, no step 4)
    with profiling.trace(tmp_path / "again"):  # the run's trace was stopped: another can start
        pass


def test_bench_trace_writes_a_trace_per_point_and_prints_its_top_operations(tmp_path, capsys):
    from harness import cli

    argv = ["bench", "--models", "mlp_tiny", "--batch-sizes", "16", "--windows", "5", "--dispatches", "1"]
    assert cli.main([*argv, "--num-devices", "1", "--no-ledger", "--trace", str(tmp_path / "traces")]) == 0
    out = capsys.readouterr().out
    (point,) = (tmp_path / "traces").iterdir()
    assert point.name.startswith("mlp_tiny-w1-b16-float32-pmap-device")
    ops = profiling.top_ops(profiling.latest_trace(point))
    assert ops and "profile: top" in out
    row = json.loads(out.strip().splitlines()[-1])
    assert row["figures"]["trace"] == str(point)
