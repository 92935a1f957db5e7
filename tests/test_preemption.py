"""Stop signals: a Ctrl-C is never lost, not even while a garbage-collector callback runs (JAX registers one)."""

import gc
import json
import signal
import subprocess
import sys
import time
import weakref

import pytest

from harness.preemption import StopSignals

SIGINT_IN_GC_CALLBACK = """
import gc, os, signal, sys, time
from harness import cli
fired = []
def callback(phase, info):  # like JAX's _xla_gc_callback: the SIGINT arrives while it runs
    if phase == "start" and not fired and "jax" in sys.modules:
        fired.append(1)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
gc.callbacks.append(callback)
sys.exit(cli.main(sys.argv[1:]))
"""


def _sigint_inside_a_gc_callback() -> None:
    fired = []

    def callback(phase, info):
        if phase == "start" and not fired:
            fired.append(1)
            signal.raise_signal(signal.SIGINT)
            time.sleep(0.01)  # the handler runs here, inside the callback

    gc.callbacks.append(callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
    assert fired


def _sigint_inside_a_weakref_callback() -> None:
    class Thing:
        pass

    thing, fired = Thing(), []

    def callback(ref):
        fired.append(1)
        signal.raise_signal(signal.SIGINT)
        time.sleep(0.01)

    ref = weakref.ref(thing, callback)
    del thing  # the callback runs now; an exception in it is "ignored"
    assert fired and ref() is None


@pytest.mark.parametrize("where", [_sigint_inside_a_gc_callback, _sigint_inside_a_weakref_callback])
def test_an_interrupt_python_would_drop_is_raised_again(where):
    with StopSignals(polite=False), pytest.raises(KeyboardInterrupt):
        where()
        time.sleep(2)  # with Python's own handling the interrupt is dropped in the callback: this sleep would finish


def test_a_polite_stop_asked_for_inside_a_gc_callback_is_kept_and_passed_on():
    with StopSignals(polite=True) as early:
        _sigint_inside_a_gc_callback()
        assert early.requested == "SIGINT"
        with StopSignals() as training:  # train_and_evaluate's own handlers take over the request
            assert training.requested == "SIGINT"


def test_handlers_inside_a_command_that_is_interrupted_at_once_interrupt_at_once():
    """`bench check --tta` and `bench suite` train through train_and_evaluate, whose handlers are polite: inside
    a command whose Ctrl-C interrupts at once, they interrupt at once too; inside `harness train`'s they stay
    polite and take over its state."""
    with StopSignals(polite=False), StopSignals() as training:
        assert not training.polite
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    with StopSignals(polite=True, starting=True) as command:
        with StopSignals() as training:
            assert training.polite and training.starting
            signal.raise_signal(signal.SIGINT)  # not the command's own process (owner): a request, no exit
            assert training.requested == "SIGINT"
        assert command.requested == "SIGINT" and command.starting


@pytest.mark.parametrize("distributed", [True, False])
def test_a_stop_during_start_up_of_a_run_joining_others_is_left_to_jaxs_service(
    monkeypatch, tiny_config, tmp_path, distributed
):
    """A process of a multi-process run must not leave on its own during start-up: from before it joins the others,
    a stop is kept for JAX's preemption service, which stops every process at the same step."""
    from harness import preemption, runtime, train
    from harness.errors import ConfigError

    seen = []

    def initialize_distributed(enabled):
        seen.append(preemption.installed().starting)
        raise ConfigError("enough")

    monkeypatch.setattr(runtime, "initialize_distributed", initialize_distributed)
    tiny_config.distributed = distributed
    with StopSignals(polite=True, starting=True, owner=True), pytest.raises(ConfigError):
        train.train_and_evaluate(tiny_config, tmp_path / "run")
    assert seen == [not distributed]


def _train_args(data_dir, workdir) -> list[str]:
    args = ["train", "--config", "smoke", "--workdir", str(workdir), "--config.num_epochs=4"]
    return [*args, f"--config.data_dir={data_dir}", "--config.report=false"]


def _assert_stopped_during_start_up(p: subprocess.CompletedProcess, workdir) -> None:
    assert p.returncode == 0, p.stdout + p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("harness:")]
    assert lines == ["harness: stopped by SIGINT during start-up, before the first step: nothing to save"], p.stderr
    assert "Exception ignored" not in p.stderr and "Traceback" not in p.stderr
    assert not (workdir / "checkpoints").is_dir() or not list((workdir / "checkpoints").iterdir())


def test_harness_train_stops_at_once_on_a_sigint_inside_a_gc_callback_during_start_up(tiny_data_dir, tmp_path):
    """Python would drop this interrupt ("Exception ignored in"): it is delivered again, and ends start-up."""
    args = _train_args(tiny_data_dir, tmp_path / "run")
    p = subprocess.run(
        [sys.executable, "-c", SIGINT_IN_GC_CALLBACK, *args], capture_output=True, text=True, timeout=300
    )
    _assert_stopped_during_start_up(p, tmp_path / "run")
    assert "stopped by SIGINT at step" not in p.stdout


SIGINT_WHILE_SLOW = """
import os, signal, sys, time
from harness import cli, loop, train
where = sys.argv.pop(1)
def slow(*args, **kwargs):  # a long data preparation or compilation, and a Ctrl-C during it
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(120)
if where == "data":
    train.setup = slow
else:
    loop.Loop._compile = slow
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("where", ["data", "compile"])
def test_a_stop_during_start_up_ends_harness_train_at_once(tiny_data_dir, tmp_path, where):
    args = _train_args(tiny_data_dir, tmp_path / "run")
    started = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-c", SIGINT_WHILE_SLOW, where, *args], capture_output=True, text=True, timeout=300
    )
    assert time.monotonic() - started < 60, "the stop waited for the slow start-up to finish"
    _assert_stopped_during_start_up(p, tmp_path / "run")


TTA_CONFIG = """
from harness.config import base_config


def get_config():  # never reaches the target (it barely learns): every seed runs all its epochs
    c = base_config()
    c.dataset, c.data_dir, c.model = "fashion_mnist", {data_dir!r}, "mlp_tiny"
    c.num_epochs, c.batch_size, c.learning_rate, c.report = 300, 64, 1e-9, False
    return c
"""

SLOW_FINAL_SAVE = """
import sys, time
from harness import checkpoint, cli, preemption
original = checkpoint.Checkpoints.finalize
def finalize(self):
    if preemption.stop_requested():
        time.sleep(60)  # a stop's save that takes long: a second Ctrl-C must not wait for it
    original(self)
checkpoint.Checkpoints.finalize = finalize
sys.exit(cli.main(sys.argv[1:]))
"""


def _bench_tta(tmp_path, data_dir, runner: list[str]) -> subprocess.Popen:
    config = tmp_path / "never.py"
    config.write_text(TTA_CONFIG.format(data_dir=data_dir))
    args = ["bench", "tta", "--config", str(config), "--seeds", "0,1,2", "--target", "0.99", "--no-ledger"]
    return subprocess.Popen(
        [sys.executable, *runner, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )


def _read_until(proc: subprocess.Popen, fragment: str) -> list[str]:
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if fragment in line:
            return lines
    pytest.fail(f"no {fragment!r} in the output: {''.join(lines)[-2000:]}{proc.stderr.read()[-2000:]}")


def test_a_sigint_to_bench_tta_ends_the_current_seed_and_keeps_the_finished_ones(tiny_data_dir, tmp_path):
    proc = _bench_tta(tmp_path, tiny_data_dir, ["-m", "harness.cli"])
    try:
        before = _read_until(proc, "seed 1: epoch 2/300")  # it speaks while it trains
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    out = "".join(before) + out
    assert proc.returncode == 0, out[-2000:] + err
    assert "seed 0 (1 of 3): training" in out and "seed 0: epoch 300/300" in out
    assert "seed 0: did not reach; final test_accuracy" in out and "seed 2 (3 of 3)" not in out
    assert "stopped by SIGINT after 1 of 3 seeds: the finished seeds are kept" in out
    (row,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["seed"] for r in row["figures"]["runs"]] == [0] and row["figures"]["seeds"] == 1
    assert "Traceback" not in err and [line for line in err.splitlines() if line.startswith("harness:")] == [
        "harness: stopping: the current seed ends now, the finished ones are kept (Ctrl-C again to quit now)"
    ]


def test_a_second_sigint_to_bench_tta_exits_130_at_once(tiny_data_dir, tmp_path):
    proc = _bench_tta(tmp_path, tiny_data_dir, ["-c", SLOW_FINAL_SAVE])
    try:
        _read_until(proc, "seed 0: epoch 2/300")
        proc.send_signal(signal.SIGINT)
        time.sleep(2)  # the seed stops; its save is slow
        proc.send_signal(signal.SIGINT)
        second = time.monotonic()
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert time.monotonic() - second < 10, "the second Ctrl-C waited for the save"
    assert err.splitlines()[-1] == "harness: interrupted" and "Traceback" not in err, err
