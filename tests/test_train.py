import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import final_checkpoint

from harness import cli, train
from harness import config as config_lib
from harness.data import datasets
from harness.errors import ConfigError, TrainingError


def _rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("parallel", "model"), [("pmap", "mlp_tiny"), ("jit", "cnn_tiny")])
def test_end_to_end_on_imported_idx_data(tiny_config, tmp_path, parallel, model):
    tiny_config.update(parallel=parallel, model=model, num_epochs=3)
    lines = []
    summary = train.train_and_evaluate(tiny_config, tmp_path, print_fn=lines.append)
    assert summary["test_accuracy"] > 0.5  # synthetic classes are easy; chance is 0.1
    assert summary["test_examples"] == 100  # the whole test split, last batch padded (100 = 64 + 36)
    assert summary["compilations"] == {"train": 1, "eval": 1}
    assert any(line.startswith("compiling… ") for line in lines)
    conv = "XLA convolutions, " if model.startswith("cnn") else ""
    plan = f"plan: {parallel} on 8 cpu devices, {conv}1 micro-batch, 1 step per dispatch, float32"
    assert next(line for line in lines if not line.startswith("compilation cache: ")) == plan  # the first line
    assert final_checkpoint(tmp_path)[1]["plan"]["strategy"] == parallel  # the plan is in the checkpoint
    assert 0 < summary["time_to_first_step_seconds"] < 120  # set once, from the call to the first finished step
    rows = _rows(tmp_path)
    evals = [r for r in rows if r["kind"] == "eval"]
    trains = [r for r in rows if r["kind"] == "train"]
    assert len(evals) + len(trains) == len(rows)
    assert [r["epoch"] for r in evals] == [1, 2, 3]
    assert all({"step", "epoch", "test_loss", "test_accuracy"} <= r.keys() for r in evals)
    assert trains and all({"step", "train_loss", "examples_per_sec"} <= r.keys() for r in trains)
    assert [r["step"] for r in trains] == list(range(4, 25, 4))  # log_every_steps=4; 8 steps an epoch × 3
    assert evals[-1]["test_loss"] < evals[0]["test_loss"]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "config.json").read_text())["model"] == model


def test_end_to_end_with_tfds_mock_data(tiny_config, tmp_path, monkeypatch, mock_tfds):
    monkeypatch.setattr(datasets, "ensure_prepared", lambda name, data_dir: (datasets.builder(name), "mock"))
    tiny_config.update(num_epochs=1, dataset="mnist")
    with mock_tfds(num_examples=192):
        summary = train.train_and_evaluate(tiny_config, tmp_path, print_fn=lambda _: None)
    assert summary["step"] == 3 and summary["test_examples"] == 192


def test_the_config_is_validated_once_per_run(tiny_config, tmp_path, monkeypatch):
    calls = []
    validate = config_lib.validate
    monkeypatch.setattr(config_lib, "validate", lambda *args: calls.append(args) or validate(*args))
    train.train_and_evaluate(tiny_config, tmp_path, print_fn=lambda _: None)
    assert len(calls) == 1


def test_non_finite_loss_stops_with_a_clear_message(tiny_config, tmp_path):
    tiny_config.update(optimizer="sgd", learning_rate=1e30, momentum=0.0)
    with pytest.raises(TrainingError, match=r"non-finite training loss .* at step \d+, epoch 1"):
        train.train_and_evaluate(tiny_config, tmp_path, print_fn=lambda _: None)


def test_evaluate_matches_training_summary(tiny_config, tmp_path):
    from harness.evaluate import evaluate_workdir, predict

    summary = train.train_and_evaluate(tiny_config, tmp_path, print_fn=lambda _: None)
    result = evaluate_workdir(tmp_path)
    assert result["step"] == summary["step"] and result["test_examples"] == 100
    np.testing.assert_allclose(result["test_accuracy"], summary["test_accuracy"])
    np.testing.assert_allclose(result["test_loss"], summary["test_loss"], rtol=1e-5)
    rows = predict(tmp_path, [0, 99])
    assert [r["index"] for r in rows] == [0, 99]
    for r in rows:
        probs = [p for _, p in r["top3"]]
        assert probs == sorted(probs, reverse=True) and r["predicted"] == r["top3"][0][0]
        assert r["true"] in datasets.class_names("fashion_mnist")


SHIPPED = sorted(p.stem for p in config_lib.CONFIGS_DIR.glob("*.py"))
FIRST_OVERRIDES = ["batch_size=64", "learning_rate=0.01", "dtype=bfloat16", "parallel=jit", "seed=7"]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_trains_one_epoch_with_num_epochs_alone(name, tiny_data_dir, tmp_path, capsys):
    workdir = tmp_path / name
    args = ["train", "--config", name, "--workdir", str(workdir), "--config.num_epochs=1"]
    status = cli.main([*args, f"--config.data_dir={tiny_data_dir}", "--config.report=false"])
    out, err = capsys.readouterr()
    assert status == 0, err
    evals = [r for r in _rows(workdir) if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [1], out


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_accepts_the_first_overrides_users_make(name):
    for override in FIRST_OVERRIDES:
        config_lib.validate(config_lib.load(name, ["num_epochs=1", override]), num_devices=8)
    config_lib.validate(config_lib.load(name, ["num_epochs=3", *FIRST_OVERRIDES]), num_devices=8)


def test_warmup_fraction_outside_0_1_is_refused():
    with pytest.raises(ConfigError, match=r"warmup_fraction=1.0: must be in \[0, 1\)"):
        config_lib.validate(config_lib.load("fashion_mnist_mlp", ["warmup_fraction=1"]), 1)


def _train_cli(tiny_data_dir, workdir, *overrides) -> list:
    args = ["train", "--config", "smoke", "--workdir", str(workdir), f"--config.data_dir={tiny_data_dir}"]
    return [*args, "--config.report=false", *overrides]


def test_a_batch_larger_than_the_training_split_is_refused_and_leaves_nothing(tiny_data_dir, tmp_path, capsys):
    workdir = tmp_path / "run"
    assert cli.main(_train_cli(tiny_data_dir, workdir, "--config.batch_size=1000000000")) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "harness: error: config.batch_size=1000000000: larger than the training split (512 examples)"
    ]
    assert not workdir.exists()


@pytest.mark.parametrize("existing_empty_dir", [False, True])
def test_a_step_that_cannot_fit_in_memory_stops_before_training_and_leaves_nothing(
    tiny_data_dir, tmp_path, capsys, monkeypatch, existing_empty_dir
):
    from harness import runtime

    workdir = tmp_path / "run"
    if existing_empty_dir:
        workdir.mkdir()
    monkeypatch.setattr(runtime, "available_bytes", lambda devices: 200 * 1024)  # the state fits, the step not
    assert cli.main(_train_cli(tiny_data_dir, workdir)) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert (
        "GiB per device (XLA's estimate) but cpu has 0.0 GiB free per device: use a smaller config.batch_size" in line
    )
    assert (workdir.is_dir() and not any(workdir.iterdir())) if existing_empty_dir else not workdir.exists()


def test_the_memory_estimate_of_a_real_step_is_positive_and_below_the_host_memory(tiny_config, tmp_path):
    from harness import parallel, plan, runtime

    devices = runtime.select_devices(0)
    run = train.setup(tiny_config, devices, plan.resolve(tiny_config, devices), print_fn=lambda _: None)
    indices = run.par.shard_indices(np.arange(tiny_config.batch_size, dtype=np.int32))
    run.par.compile(run.state, run.train, run.test, indices)
    need = parallel.needed_bytes(run.par._fns["train"])
    assert 0 < need < runtime.available_bytes(run.par.devices)


def _harness(*args, data_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "TFDS_DATA_DIR": str(data_dir), "HARNESS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, env=env)


def test_a_run_records_its_data_dir_so_eval_reads_it_wherever_tfds_points_later(tiny_data_dir, tmp_path):
    workdir = tmp_path / "run"
    p = _harness(
        "train", "--config", "smoke", "--workdir", str(workdir), "--config.report=false", data_dir=tiny_data_dir
    )
    assert p.returncode == 0, p.stderr
    assert json.loads((workdir / "config.json").read_text())["data_dir"] == tiny_data_dir
    p = _harness("eval", "--workdir", str(workdir), "--json", data_dir=tmp_path / "elsewhere")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["step"] == 2
    assert not (tmp_path / "elsewhere").exists()  # nothing prepared into the new default


def test_trajectory_changes_name_the_model_widths_and_count_missing_keys_at_their_defaults():
    c = config_lib.base_config()
    saved = json.loads(c.to_json_best_effort())
    older = {k: v for k, v in saved.items() if k not in ("cnn_channels", "cnn_dense", "width")}
    assert train.trajectory_changes(older, c) == []  # a run saved before the width keys: their defaults
    c.update(cnn_channels=(16, 32), width=2)
    assert train.trajectory_changes(older, c) == ["cnn_channels ([32, 64] → [16, 32])", "width (1 → 2)"]


EVERY_OPTION = ["--config.model=cnn_tiny", "--config.norm=batch", "--config.dropout=0.2", "--config.eval_flip=yes"]
EVERY_OPTION += ["--config.augment_translate=2", "--config.augment_flip=auto", "--config.augment_cutout=6"]
EVERY_OPTION += ["--config.label_smoothing=0.1", "--config.ema_decay=0.9", "--config.optimizer=sgd"]
EVERY_OPTION += ["--config.learning_rate=0.05", "--config.nesterov=yes", "--config.schedule=warmup_linear"]
EVERY_OPTION += ["--config.warmup_fraction=0.2", "--config.batch_size=64"]


def test_one_epoch_with_every_option_on_trains_reports_evaluates_and_predicts_with_the_ema(
    tiny_data_dir, tmp_path, capsys
):
    """The smoke config with augmentation, BatchNorm, dropout, label smoothing, EMA, test-time flip and Nesterov
    SGD: trains an epoch, writes its report, and ``harness eval``/``predict`` use the EMA weights with BatchNorm's
    running statistics (as training's own evaluation did)."""
    from harness import steps
    from harness.build import place_data
    from harness.evaluate import load_trained
    from harness.loop import evaluate

    args = ["train", "--config", "smoke", "--workdir", str(tmp_path), f"--config.data_dir={tiny_data_dir}"]
    assert cli.main([*args, *EVERY_OPTION]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "plan: pmap on 8 cpu devices, XLA convolutions, 1 micro-batch" in out and "report: " in out
    trained = [r for r in _rows(tmp_path) if r["kind"] == "eval"][-1]
    assert cli.main(["eval", "--workdir", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(result["test_accuracy"], trained["test_accuracy"])
    np.testing.assert_allclose(result["test_loss"], trained["test_loss"], rtol=1e-5)
    config, run, _ = load_trained(tmp_path)
    builder, _ = datasets.ensure_prepared(config.dataset, config.data_dir)
    place_data(run, test=datasets.load_split(builder, "test"))
    raw = steps.inference(run.state.replace(ema=None))  # the parameters themselves, not their EMA
    assert evaluate(run.par, raw, run.test, run.num_test, 64)["test_loss"] != pytest.approx(result["test_loss"])
    assert cli.main(["predict", "--workdir", str(tmp_path), "--index", "0", "1", "--json"]) == 0
    assert [r["index"] for r in json.loads(capsys.readouterr().out)] == [0, 1]


def test_a_two_epoch_best_recipe_evaluates_its_ema_within_half_a_point_of_its_raw_weights(tmp_path_factory, tmp_path):
    """mnist_best's recipe (EMA 0.999, warmup-cosine Adam, augmentation, dropout, label smoothing; the tiny CNN to
    stay cheap) for 2 epochs of 64 steps on generated digits. After 128 updates a constant-decay EMA started at the
    initial weights would still weigh them 0.999^128 = 88 % (near chance); the warming decay's EMA evaluates within
    0.5 points of the raw weights of the same run."""
    from helpers import prepared_mnist

    from harness import steps
    from harness.build import place_data
    from harness.evaluate import load_trained
    from harness.loop import evaluate

    data_dir = prepared_mnist(tmp_path_factory, num_train=8192, num_test=500, seed=11)
    overrides = ["num_epochs=2", "model=cnn_tiny", f"data_dir={data_dir}", "report=false"]
    summary = train.train_and_evaluate(config_lib.load("mnist_best", overrides), tmp_path, print_fn=lambda *_: None)
    assert summary["step"] == 128
    config, run, _ = load_trained(tmp_path)
    builder, _ = datasets.ensure_prepared(config.dataset, config.data_dir)
    place_data(run, test=datasets.load_split(builder, "test"))
    raw = steps.inference(run.state.replace(ema=None))
    raw_accuracy = evaluate(run.par, raw, run.test, run.num_test, config.batch_size)["test_accuracy"]
    assert raw_accuracy > 0.5  # learned something (chance is 0.1): the comparison means something
    assert summary["test_accuracy"] >= raw_accuracy - 0.005, (summary["test_accuracy"], raw_accuracy)
