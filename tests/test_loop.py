"""The loop on fakes: a fake device (steps that count), a fake clock (each step takes 0.25 s when its result comes
back) and a fake checkpointer. Cadences fire at the right steps and epochs, a stop saves and returns, rows are
timed by the injected clock."""

import dataclasses
import types

import pytest

from harness import config as config_lib
from harness import hooks as hooks_lib
from harness.build import Run
from harness.loop import MAX_IN_FLIGHT, Loop, Progress

BATCH, STEPS_PER_EPOCH, STEP_SECONDS = 8, 8, 0.25


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass(frozen=True)
class State:
    step: int = 0
    params: None = None
    batch_stats: None = None  # like TrainState's parts that are None when their option is off
    ema: None = None


class FakeParallel:
    """Steps that only count; a train step's result costs STEP_SECONDS of the clock when the host reads it."""

    kind, num_devices = "jit", 1

    def __init__(self, clock: FakeClock, accuracy: float = 0.5):
        self.clock, self.accuracy, self.traces = clock, accuracy, {"train": 1, "eval": 1}
        self.dispatches = self.in_flight = self.most_in_flight = 0  # steps sent whose results the host has not read

    def _sent(self, k: int) -> None:
        self.dispatches, self.in_flight = self.dispatches + 1, self.in_flight + k
        self.most_in_flight = max(self.most_in_flight, self.in_flight)

    def shard_indices(self, indices):
        return indices

    def compile(self, *args) -> float:
        return 0.0

    def unreplicate(self, state):
        return state

    def train_step(self, state, data, indices):
        self._sent(1)
        return State(state.step + 1), {"loss": 2.0 * len(indices), "correct": 3.0, "count": len(indices), "steps": 1}

    def train_steps(self, state, data, indices):
        k, n = indices.shape[0], indices.size
        self._sent(k)
        return State(state.step + k), {"loss": 2.0 * n, "correct": 3.0 * k, "count": n, "steps": k}

    def eval_step(self, params, data, indices):
        return {"loss": 1.0 * len(indices), "correct": self.accuracy * len(indices), "count": len(indices)}

    def metrics_to_host(self, sums):
        sums = dict(sums)
        steps = sums.pop("steps", 0)
        self.clock.now += STEP_SECONDS * steps
        self.in_flight -= steps
        return sums


class FakeCheckpoints:
    def __init__(self):
        self.saved, self.last_saved, self.finalized = [], None, 0

    def save(self, step, state, meta):
        assert state.step == step == meta["step"]
        self.saved.append(meta)
        self.last_saved = step

    def poll(self):
        pass

    def finalize(self):
        self.finalized += 1


class Recorder(hooks_lib.Hook):
    def __init__(self):
        self.rows, self.epochs, self.examples = [], [], 0

    def on_steps_done(self, examples, train_loss):
        self.examples += examples

    def on_row(self, row):
        self.rows.append(row)

    def on_epoch_end(self, epoch, row):
        self.epochs.append(epoch)


def _loop(
    clock,
    ckpt,
    *,
    stop=lambda step: None,
    hooks=(),
    accuracy=0.5,
    steps_per_dispatch=1,
    processes=1,
    steps_per_epoch=STEPS_PER_EPOCH,
    **overrides,
):
    config = config_lib.base_config()
    config.update({"batch_size": BATCH, "num_epochs": 3, **overrides})
    plan = types.SimpleNamespace(
        steps_per_dispatch=steps_per_dispatch, processes=processes, to_dict=lambda: {"strategy": "fake"}
    )
    par = FakeParallel(clock, accuracy)
    run = Run(config, plan, par, State(), State(), steps_per_epoch, {}, {}, BATCH * steps_per_epoch, 4 * BATCH)
    return Loop(run, ckpt, Progress(), hooks=hooks, print_fn=lambda _: None, clock=clock, stop=stop)


def test_cadences_fire_at_their_steps_and_epochs_and_rows_are_timed_by_the_clock():
    clock, ckpt, recorder = FakeClock(), FakeCheckpoints(), Recorder()
    loop = _loop(
        clock,
        ckpt,
        hooks=[recorder],
        log_every_steps=3,
        checkpoint_every_steps=5,
        eval_every_epochs=2,
        checkpoint_min_seconds=0.0,
    )
    summary = loop()
    rows = [r.to_dict() for r in recorder.rows]
    assert rows == loop.p.history
    trains = [r for r in rows if r["kind"] == "train" and "epoch_seconds" not in r]
    assert [r["step"] for r in trains] == [3, 6, 9, 12, 15, 18, 21, 24]
    assert {r["examples_per_sec"] for r in trains} == {BATCH / STEP_SECONDS}  # 3 steps in 0.75 s of the clock
    assert all(r["train_loss"] == 2.0 and r["train_accuracy"] == 3.0 / BATCH for r in trains)
    epochs = [r for r in rows if "epoch_seconds" in r]
    assert [(r["step"], r["epoch"], r["kind"]) for r in epochs] == [(8, 1, "train"), (16, 2, "eval"), (24, 3, "eval")]
    assert {r["epoch_seconds"] for r in epochs} == {STEPS_PER_EPOCH * STEP_SECONDS}
    assert [m["step"] for m in ckpt.saved] == [5, 8, 10, 15, 16, 20, 24]  # every 5 steps and every epoch's end
    assert [m.get("test_accuracy") for m in ckpt.saved if m["step_in_epoch"] == 0] == [None, 0.5, 0.5]
    assert ckpt.saved[0]["window_sums"]["count"] == 2 * BATCH  # steps 4 and 5: after the row of step 3
    assert ckpt.saved[0]["epoch_sums"]["count"] == 5 * BATCH and ckpt.saved[1]["epoch_sums"] == {}
    assert recorder.epochs == [0, 1, 2] and recorder.examples == 24 * BATCH
    assert summary["step"] == 24 and summary["test_accuracy"] == 0.5 and summary["test_examples"] == 4 * BATCH
    assert summary["train_seconds"] == 24 * STEP_SECONDS and "kind" not in summary and ckpt.finalized == 0


@pytest.mark.parametrize(("steps_per_dispatch", "saved_at"), [(1, 10), (4, 12)])
def test_a_stop_is_asked_at_every_step_and_saves_and_returns(steps_per_dispatch, saved_at):
    clock, ckpt, asked = FakeClock(), FakeCheckpoints(), []

    def stop(step):
        asked.append(step)
        return "SIGTERM" if step >= 10 else None

    summary = _loop(clock, ckpt, stop=stop, steps_per_dispatch=steps_per_dispatch, checkpoint_min_seconds=0.0)()
    assert summary == {"step": saved_at, "stopped": "SIGTERM", "train_seconds": 8 * STEP_SECONDS}
    assert set(asked) == set(range(1, saved_at + 1))  # every step asked, those of the last dispatch too
    assert [m["step"] for m in ckpt.saved] == [8, saved_at] and ckpt.finalized == 1
    assert ckpt.saved[-1]["step_in_epoch"] == saved_at - 8 and ckpt.saved[-1]["epoch"] == 1


@pytest.mark.parametrize(("steps_per_dispatch", "most"), [(1, MAX_IN_FLIGHT), (4, MAX_IN_FLIGHT), (16, 16)])
def test_after_a_stop_at_most_one_dispatch_runs_before_the_save(steps_per_dispatch, most):
    """The device is never more than ``max(MAX_IN_FLIGHT, one dispatch)`` steps ahead of the host, and no dispatch
    is sent once the stop was seen: a stop arriving at any moment waits for at most that many steps."""
    clock, ckpt, seen = FakeClock(), FakeCheckpoints(), []

    def stop(step):
        if step < 40:
            return None
        seen.append(loop.run.par.dispatches)
        return "SIGINT"

    loop = _loop(clock, ckpt, stop=stop, steps_per_dispatch=steps_per_dispatch, steps_per_epoch=64)
    summary = loop()
    assert loop.run.par.most_in_flight == most
    assert loop.run.par.dispatches == seen[0]  # nothing sent after the stop was seen
    assert summary["stopped"] == "SIGINT" and ckpt.saved[-1]["step"] == summary["step"] < 40 + steps_per_dispatch


def test_stop_at_accuracy_ends_after_the_evaluation_that_reaches_it():
    clock, ckpt = FakeClock(), FakeCheckpoints()
    summary = _loop(clock, ckpt, accuracy=0.75, stop_at_accuracy=0.7)()
    assert summary["reached_target_epoch"] == 1 and summary["step"] == 8
    assert [m["step"] for m in ckpt.saved] == [8]


def test_the_first_step_is_timed_from_the_start_by_the_clock():
    clock, ckpt = FakeClock(), FakeCheckpoints()
    loop = _loop(clock, ckpt)
    clock.now += 7.0  # data and compilation
    assert loop()["time_to_first_step_seconds"] == 7.0


def test_epoch_ends_save_when_the_last_save_is_old_enough_and_always_when_the_run_ends_there():
    clock, ckpt = FakeClock(), FakeCheckpoints()  # an epoch is 8 steps = 2 s of the clock
    _loop(clock, ckpt, num_epochs=6, checkpoint_min_seconds=5.0)()
    assert [m["step"] for m in ckpt.saved] == [24, 48]  # 6 s after the start, then the last epoch

    clock, ckpt = FakeClock(), FakeCheckpoints()  # a stop asked at an epoch's end saves there
    summary = _loop(
        clock, ckpt, num_epochs=6, checkpoint_min_seconds=5.0, stop=lambda s: "SIGTERM" if s >= 16 else None
    )()
    assert summary["stopped"] == "SIGTERM" and [m["step"] for m in ckpt.saved] == [16]

    clock, ckpt = FakeClock(), FakeCheckpoints()  # periodic saves count as saves
    _loop(clock, ckpt, num_epochs=4, checkpoint_min_seconds=3.0, checkpoint_every_steps=12)()
    assert [m["step"] for m in ckpt.saved] == [12, 24, 32]  # 8: too early; 16: 1 s after 12; 24: due; 32: last


def test_several_processes_save_at_every_epoch_end_whatever_the_minimum():
    clock, ckpt = FakeClock(), FakeCheckpoints()
    _loop(clock, ckpt, processes=2, checkpoint_min_seconds=100.0)()
    assert [m["step"] for m in ckpt.saved] == [8, 16, 24]
