"""Resuming: bit-exact after a stop mid-epoch, other device counts, refusals, NaN, fine-tuning, a final step that is
not good, a read-only workdir, and the lines that describe positions."""

import ast
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import final_checkpoint, read_events

from harness import checkpoint, cli, loop, records, train
from harness import hooks as hooks_lib
from harness.checkpoint import Checkpoints
from harness.errors import TrainingError, WorkdirError
from harness.records import TIMING_KEYS


class SignalAt(hooks_lib.Hook):
    """Sends ``sig`` to this process once ``at`` examples have completed (like a preemption notice)."""

    def __init__(self, at_examples: int, sig=signal.SIGTERM):
        self.at, self.sig, self.seen = at_examples, sig, 0

    def on_steps_done(self, examples, train_loss):
        self.seen += examples
        if self.seen >= self.at and self.at:
            self.at = 0
            os.kill(os.getpid(), self.sig)


def _history(meta):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in meta["history"]]


def _assert_bitwise_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def _quiet(*_):
    return None


@pytest.fixture
def straight(tiny_config, tmp_path_factory):
    """The reference: the tiny config trained without interruption (3 epochs of 8 steps)."""
    tiny_config.update(num_epochs=3, checkpoint_every_steps=3, log_every_steps=2)
    workdir = tmp_path_factory.mktemp("straight")
    train.train_and_evaluate(tiny_config, workdir, print_fn=_quiet)
    return workdir


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_mid_epoch_then_resume_is_bitwise_identical(tiny_config, tmp_path, straight, sig):
    tiny_config.update(num_epochs=3, checkpoint_every_steps=3, log_every_steps=2)
    hooks = [*train.default_hooks(tiny_config, tmp_path, _quiet), SignalAt(11 * 64, sig)]  # mid epoch 2
    lines = []
    summary = train.train_and_evaluate(tiny_config, tmp_path, hooks=hooks, print_fn=lines.append)
    assert summary["stopped"] == sig.name and 11 <= summary["step"] < 16
    assert any(line.startswith(f"stopped by {sig.name}") and "Resume with" in line for line in lines)
    lines.clear()
    train.train_and_evaluate(tiny_config, tmp_path, print_fn=lines.append)
    assert any(line.startswith(f"resumed from step {summary['step']} (epoch 2 of 3") for line in lines)
    (a, meta_a), (b, meta_b) = final_checkpoint(straight), final_checkpoint(tmp_path)
    assert int(a.step) == int(b.step) == 24
    _assert_bitwise_equal(a, b)  # parameters and optimizer state
    assert _history(meta_a) == _history(meta_b)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in meta_b["history"]]  # no duplicates, none missing
    purges = [e.step for e in read_events(tmp_path / "tensorboard") if e.session_log.status == 1]  # START
    assert summary["step"] + 1 in purges  # TensorBoard drops the stopped process's events past the checkpoint


def test_negative_control_without_the_data_position_diverges(tiny_config, tmp_path, straight, monkeypatch):
    tiny_config.update(num_epochs=3, checkpoint_every_steps=3, log_every_steps=2)
    hooks = [*train.default_hooks(tiny_config, tmp_path, _quiet), SignalAt(11 * 64)]
    stopped = train.train_and_evaluate(tiny_config, tmp_path, hooks=hooks, print_fn=_quiet)["step"]
    original = loop.batches.batch_indices

    def order_restarts_on_resume(seed, epoch, step, bs, n):  # forgets where in the epoch the run stood
        return original(seed, epoch, step - stopped % 8 if epoch == stopped // 8 else step, bs, n)

    monkeypatch.setattr(loop.batches, "batch_indices", order_restarts_on_resume)
    train.train_and_evaluate(tiny_config, tmp_path, print_fn=_quiet)
    (a, _), (b, _) = final_checkpoint(straight), final_checkpoint(tmp_path)
    assert any(
        not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True)
    )


@pytest.mark.parametrize(("before", "after"), [(8, 1), (1, 2)])
def test_resume_on_another_device_count_stays_on_the_trajectory(tiny_config, tmp_path, straight, before, after):
    tiny_config.update(num_epochs=3, checkpoint_every_steps=3, log_every_steps=2, num_devices=before)
    hooks = [*train.default_hooks(tiny_config, tmp_path, _quiet), SignalAt(13 * 64)]
    train.train_and_evaluate(tiny_config, tmp_path, hooks=hooks, print_fn=_quiet)
    tiny_config.num_devices = after
    lines = []
    train.train_and_evaluate(tiny_config, tmp_path, print_fn=lines.append)
    assert any(line.startswith("resumed from step ") and f"saved on cpu×{before}" in line for line in lines)
    (a, _), (b, _) = final_checkpoint(straight), final_checkpoint(tmp_path)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)


def test_resuming_a_checkpoint_whose_rows_have_no_kind_infers_it_once(tiny_config, tmp_path, straight, monkeypatch):
    """Checkpoints and metrics.jsonl written before rows had a ``kind``: the resumed run gives every row its kind
    (eval rows carry the test accuracy) and goes on exactly like a straight run."""
    tiny_config.update(num_epochs=3, checkpoint_every_steps=3, log_every_steps=2)
    as_before = records.MetricRow.to_dict
    monkeypatch.setattr(
        records.MetricRow, "to_dict", lambda row: {k: v for k, v in as_before(row).items() if k != "kind"}
    )
    hooks = [*train.default_hooks(tiny_config, tmp_path, _quiet), SignalAt(11 * 64)]
    train.train_and_evaluate(tiny_config, tmp_path, hooks=hooks, print_fn=_quiet)
    assert not any("kind" in r for r in final_checkpoint(tmp_path)[1]["history"])  # an old checkpoint
    monkeypatch.undo()
    train.train_and_evaluate(tiny_config, tmp_path, print_fn=_quiet)
    meta_a, meta_b = final_checkpoint(straight)[1], final_checkpoint(tmp_path)[1]
    assert _history(meta_a) == _history(meta_b)  # kinds included
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows] == [r["kind"] for r in meta_a["history"]]
    assert [r["epoch"] for r in rows if r["kind"] == "eval"] == [1, 2, 3]


def test_trajectory_change_is_refused_with_the_keys(tiny_config, tmp_path):
    train.train_and_evaluate(tiny_config, tmp_path, print_fn=_quiet)
    tiny_config.update(learning_rate=0.1, seed=3)
    with pytest.raises(WorkdirError, match=r"learning_rate \(0\.003 → 0\.1\), seed \(0 → 3\)") as e:
        train.train_and_evaluate(tiny_config, tmp_path, print_fn=_quiet)
    assert "--config.init_from=" in str(e.value) and "\n" not in str(e.value)


def test_harmless_changes_resume_and_more_epochs_continue(tiny_config, tmp_path):
    train.train_and_evaluate(tiny_config, tmp_path, print_fn=_quiet)
    lines = []
    train.train_and_evaluate(tiny_config, tmp_path, print_fn=lines.append)
    assert any(line.startswith("already trained: step 16") for line in lines)
    tiny_config.update(num_epochs=3, log_every_steps=1, eval_every_epochs=1)
    summary = train.train_and_evaluate(tiny_config, tmp_path, print_fn=_quiet)
    assert summary["step"] == 24


def test_nan_stops_naming_the_last_good_checkpoint_and_saves_nothing_bad(tiny_config, tmp_path):
    # The warmup's first step has learning rate 0 (a good checkpoint at step 1), the next ones 1e30 / 8: the loss
    # goes non-finite after that first save, not before it.
    tiny_config.update(num_epochs=2, checkpoint_every_steps=1, optimizer="sgd", learning_rate=1e30, momentum=0.0)
    tiny_config.update(schedule="warmup_cosine", warmup_fraction=0.5)
    with pytest.raises(TrainingError, match=r"non-finite training loss \(nan\) at step (\d+)") as e:
        train.train_and_evaluate(tiny_config, tmp_path, print_fn=_quiet)
    failed, named = (
        int(x) for x in re.search(r"at step (\d+).*last good checkpoint: step (\d+)", str(e.value)).groups()
    )
    ckpt = Checkpoints(tmp_path, create=False)
    good = ckpt.good_steps()
    assert 1 <= named < failed and named in good and max(good) < failed
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == good
    assert all(ckpt.verify(step) is None for step in good)
    ckpt.close()
    state, meta = final_checkpoint(tmp_path)  # the newest good one restores, with finite parameters
    assert int(state.step) == meta["step"] == max(good)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def test_init_from_starts_a_new_run_from_another_runs_parameters(tiny_config, tmp_path):
    source = tmp_path / "source"
    train.train_and_evaluate(tiny_config, source, print_fn=_quiet)
    tiny_config.update(init_from=str(source), learning_rate=1e-3, num_epochs=1)
    lines = []
    summary = train.train_and_evaluate(tiny_config, tmp_path / "tuned", print_fn=lines.append)
    assert any(line.startswith(f"initialised the parameters from {source} (step 16)") for line in lines)
    assert summary["step"] == 8


def test_several_steps_per_dispatch_resume_bitwise_and_match_single_steps(tiny_config, tmp_path):
    """4 steps per device call on 1 device: a stop mid-epoch + resume is bit-exact (every step runs in the same
    program as in a straight run), rows and checkpoints fall where single steps put them, and the parameters
    stay within float tolerance of single steps."""
    tiny_config.update(num_epochs=3, num_devices=1, checkpoint_every_steps=4, log_every_steps=4)
    runs = {}
    for name, k in (("single", 1), ("fused", 4)):
        tiny_config.steps_per_dispatch = k
        runs[name] = train.train_and_evaluate(tiny_config, tmp_path / name, print_fn=_quiet)
    assert runs["fused"]["compilations"] == {"train": 1, "train_steps": 1, "eval": 1}
    assert runs["single"]["compilations"] == {"train": 1, "eval": 1}
    (fused, fused_meta), (single, single_meta) = (
        final_checkpoint(tmp_path / "fused"),
        final_checkpoint(tmp_path / "single"),
    )
    assert [r["step"] for r in _history(fused_meta)] == [r["step"] for r in _history(single_meta)]
    for x, y in zip(jax.tree.leaves(fused.params), jax.tree.leaves(single.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    stopped = tmp_path / "stopped"
    hooks = [*train.default_hooks(tiny_config, stopped, _quiet), SignalAt(10 * 64)]  # epoch 2, inside a dispatch
    summary = train.train_and_evaluate(tiny_config, stopped, hooks=hooks, print_fn=_quiet)
    assert summary["stopped"] == "SIGTERM" and summary["step"] % 4 == 0 and 8 < summary["step"] < 24
    train.train_and_evaluate(tiny_config, stopped, print_fn=_quiet)
    resumed, resumed_meta = final_checkpoint(stopped)
    _assert_bitwise_equal(resumed, fused)
    assert _history(resumed_meta) == _history(fused_meta)


def _flip_largest(step_dir):
    path = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("damage", ["no-digest", "corrupted"])
def test_a_final_step_that_is_not_good_is_trained_again_and_saved(tiny_config, tmp_path, damage):
    """A kill between Orbax's commit and the digest of the final step (or a corrupted final step): the rerun trains
    8 → 16 again and must save 16 afresh, bit-identical; before, every rerun retrained and left 16 unrestorable."""
    train.train_and_evaluate(tiny_config, tmp_path, print_fn=_quiet)
    before, _ = final_checkpoint(tmp_path)
    if damage == "no-digest":
        (tmp_path / "checkpoint_digests" / "16.json").unlink()
    else:
        _flip_largest(tmp_path / "checkpoints" / "16")
    lines = []
    assert train.train_and_evaluate(tiny_config, tmp_path, print_fn=lines.append)["step"] == 16
    assert any(line.startswith("resumed from step 8 (end of epoch 1 of 2)") for line in lines), lines
    assert any("step 16 is not restorable" in line and "saving it afresh" in line for line in lines), lines
    ckpt = Checkpoints(tmp_path, create=False)
    assert ckpt.good_steps() == [8, 16] and all(r["problem"] is None for r in ckpt.listing())
    ckpt.close()
    _assert_bitwise_equal(final_checkpoint(tmp_path)[0], before)
    lines.clear()
    train.train_and_evaluate(tiny_config, tmp_path, print_fn=lines.append)
    assert any(line.startswith("already trained: step 16") for line in lines), lines


def test_checkpoint_listing_and_resume_lines_name_finished_epochs(tiny_config, tmp_path, capsys):
    train.train_and_evaluate(tiny_config, tmp_path, print_fn=_quiet)
    accuracy = {r["epoch"]: r["test_accuracy"] for r in final_checkpoint(tmp_path)[1]["history"] if r["kind"] == "eval"}
    assert cli.main(["checkpoints", str(tmp_path)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[1:6] for line in listing] == [
        ["16", "end", "of", "epoch", "2"],
        ["8", "end", "of", "epoch", "1"],
    ], listing
    for line, epoch in zip(listing, (2, 1), strict=True):
        assert f"test_accuracy {accuracy[epoch]:.4f}" in line  # the eval saved with that checkpoint
    tiny_config.num_epochs = 1
    lines = []
    train.train_and_evaluate(tiny_config, tmp_path, print_fn=lines.append)
    assert any(line.startswith("resumed from step 16 (end of epoch 2), saved on cpu×8") for line in lines), lines
    assert "already trained: step 16 ≥ 1 epoch(s) × 8 steps; raise --config.num_epochs to go on" in lines


@contextlib.contextmanager
def _unwritable(directory):
    """Makes ``directory`` refuse new files. Tests run as root here, and root ignores permission bits, so as root
    this sets the immutable flag (chattr +i), which binds root too; otherwise it drops the write bits."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(directory)], capture_output=True).returncode != 0:
        pytest.skip("root without a working chattr +i here: no way to make a directory unwritable for root")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(directory)], check=True)


def test_resuming_in_a_read_only_workdir_is_one_line(tiny_data_dir, tmp_path, capsys):
    args = ["train", "--config", "smoke", "--workdir", str(tmp_path), f"--config.data_dir={tiny_data_dir}"]
    args += ["--config.batch_size=64", "--config.report=False"]
    assert cli.main(args) == 0
    capsys.readouterr()
    with _unwritable(tmp_path):
        assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"harness: error: cannot write {tmp_path}/config.json ("), err


# Every option of issue 13 at once (BatchNorm needs a CNN): augmentation, BatchNorm, dropout, label smoothing, EMA,
# test-time flip, Nesterov SGD under a one-cycle schedule.
EVERYTHING = dict(
    model="cnn_tiny",
    norm="batch",
    dropout=0.3,
    augment_translate=2,
    augment_flip="yes",
    augment_cutout=6,
    label_smoothing=0.1,
    ema_decay=0.9,
    eval_flip=True,
    optimizer="sgd",
    learning_rate=0.05,
    nesterov=True,
    schedule="one_cycle",
    warmup_fraction=0.3,
)


def test_every_regularisation_option_on_resumes_bitwise_and_refuses_a_changed_option(tiny_config, tmp_path):
    tiny_config.update(num_epochs=3, checkpoint_every_steps=3, log_every_steps=2, **EVERYTHING)
    train.train_and_evaluate(tiny_config, tmp_path / "straight", print_fn=_quiet)
    stopped = tmp_path / "stopped"
    hooks = [*train.default_hooks(tiny_config, stopped, _quiet), SignalAt(11 * 64)]  # mid epoch 2
    summary = train.train_and_evaluate(tiny_config, stopped, hooks=hooks, print_fn=_quiet)
    assert summary["stopped"] == "SIGTERM" and 11 <= summary["step"] < 16
    train.train_and_evaluate(tiny_config, stopped, print_fn=_quiet)
    (a, meta_a), (b, meta_b) = final_checkpoint(tmp_path / "straight"), final_checkpoint(stopped)
    assert int(a.step) == int(b.step) == 24
    assert a.batch_stats is not None and a.ema is not None
    _assert_bitwise_equal(a, b)  # parameters, optimizer state, BatchNorm statistics, EMA
    assert _history(meta_a) == _history(meta_b)
    tiny_config.update(num_epochs=4, dropout=0.5)
    with pytest.raises(WorkdirError, match=r"other settings: dropout \(0\.3 → 0\.5\)"):
        train.train_and_evaluate(tiny_config, stopped, print_fn=_quiet)
    tiny_config.update(dropout=0.3, ema_decay=0.0)  # another state shape: the settings are named all the same
    changed = r"other settings: ema_decay \(0\.9 → 0\.0\), num_epochs \(3 → 4\); resuming"
    with pytest.raises(WorkdirError, match=changed):
        train.train_and_evaluate(tiny_config, stopped, print_fn=_quiet)


NEW_KEYS = ("augment_translate", "augment_flip", "augment_cutout", "eval_flip", "norm", "dropout")
NEW_KEYS += ("label_smoothing", "ema_decay", "nesterov")


def _stored_paths(workdir, step):
    """The key paths of the arrays Orbax stored for the state of ``step``."""
    tree = json.loads((workdir / "checkpoints" / str(step) / "state" / "_METADATA").read_text())["tree_metadata"]
    return {ast.literal_eval(path) for path in tree}


def test_a_workdir_written_before_the_options_existed_resumes(tiny_config, tmp_path, monkeypatch):
    """A checkpoint as harness wrote it before TrainState had BatchNorm statistics and an EMA (Orbax stores the
    dataclass as a dict of its three fields) and a config.json without their keys: it resumes and goes on."""
    from flax import struct

    @struct.dataclass
    class OldTrainState:
        step: object
        params: object
        opt_state: object

    tiny_config.num_epochs = 1
    workdir = tmp_path / "old"
    as_now = checkpoint.Checkpoints.save

    def save_as_before(self, step, state, meta):
        old = OldTrainState(state.step, state.params, state.opt_state)
        meta = {**meta, "config": {k: v for k, v in meta["config"].items() if k not in NEW_KEYS}}
        monkeypatch.setattr(checkpoint, "_stored", lambda s: s)  # what Orbax got before: the dataclass itself
        try:
            return as_now(self, step, old, meta)
        finally:
            monkeypatch.undo()
            monkeypatch.setattr(checkpoint.Checkpoints, "save", save_as_before)

    monkeypatch.setattr(checkpoint.Checkpoints, "save", save_as_before)
    train.train_and_evaluate(tiny_config, workdir, print_fn=_quiet)
    monkeypatch.undo()
    before = _stored_paths(workdir, 8)
    assert {p[0] for p in before} == {"step", "params", "opt_state"}
    ckpt = Checkpoints(workdir, create=False)
    assert "ema" not in ckpt.read_meta(8)["config"]
    ckpt.close()
    tiny_config.num_epochs = 2
    lines = []
    assert train.train_and_evaluate(tiny_config, workdir, print_fn=lines.append)["step"] == 16
    assert any(line.startswith("resumed from step 8 (end of epoch 1 of 2)") for line in lines), lines
    assert _stored_paths(workdir, 16) == before  # options off: today's checkpoints are laid out as before


def test_a_run_saved_with_the_constant_decay_ema_resumes_and_carries_its_ema_on_at_the_warming_decay(
    tiny_config, tmp_path, monkeypatch
):
    """A workdir whose EMA harness kept at the constant decay (before the decay warmed up: the same TrainState, the
    same ``ema`` leaves) restores and trains on; from the step it resumes at, its stored EMA is updated at
    min(d, (1+t)/(10+t)). So its EMA ends as that of a straight run whose first epoch used the constant decay."""
    from harness import steps

    warming = steps.ema_decay

    def constant(decay, step):
        return jnp.asarray(decay, jnp.float32), jnp.asarray(1.0 - decay, jnp.float32)

    def constant_first_epoch(decay, step):
        old, new = constant(decay, step), warming(decay, step)
        return tuple(jnp.where(step < 8, o, n) for o, n in zip(old, new, strict=True))

    tiny_config.update(ema_decay=0.999, num_epochs=1)
    monkeypatch.setattr(steps, "ema_decay", constant)
    train.train_and_evaluate(tiny_config, tmp_path / "old", print_fn=_quiet)
    assert {p[0] for p in _stored_paths(tmp_path / "old", 8)} == {"step", "params", "opt_state", "ema"}
    tiny_config.num_epochs = 2
    monkeypatch.setattr(steps, "ema_decay", constant_first_epoch)
    train.train_and_evaluate(tiny_config, tmp_path / "straight", print_fn=_quiet)
    monkeypatch.setattr(steps, "ema_decay", warming)
    train.train_and_evaluate(tiny_config, tmp_path / "new", print_fn=_quiet)
    lines = []
    assert train.train_and_evaluate(tiny_config, tmp_path / "old", print_fn=lines.append)["step"] == 16
    assert any(line.startswith("resumed from step 8 (end of epoch 1 of 2)") for line in lines), lines
    (a, _), (b, _), (c, _) = (final_checkpoint(tmp_path / name) for name in ("straight", "old", "new"))
    _assert_bitwise_equal(a.params, b.params)
    _assert_bitwise_equal(c.params, b.params)
    gaps = [float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a.ema), jax.tree.leaves(b.ema), strict=True)]
    apart = [float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(c.ema), jax.tree.leaves(b.ema), strict=True)]
    assert max(gaps) < 1e-6  # 0 when measured; the straight run computes its decay in another expression
    assert min(apart) > 1e-5  # the first epoch's constant decay still shows (2e-4 measured, p_0 weighs 1.1 %)
