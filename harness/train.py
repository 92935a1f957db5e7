"""``train_and_evaluate(config, workdir)``: set up, resume from the latest good checkpoint, run the loop."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections

from harness import config as config_lib
from harness import hooks as hooks_lib
from harness import plan as plan_lib
from harness import preemption, runtime, settings, steps
from harness import workdir as workdir_lib
from harness.build import Run, build, place_data, restore_latest
from harness.checkpoint import Checkpoints, describe_position
from harness.data import batches, datasets
from harness.digests import write_atomic
from harness.errors import ConfigError, ForeignCheckpointError, WorkdirError
from harness.loop import Loop, Progress
from harness.preemption import StopSignals
from harness.records import CheckpointMeta, rows_of

# Keys that change what a run computes: resuming with any of them changed is refused. The others (logging,
# evaluation and checkpoint frequency, devices, parallel strategy, data dir, num_epochs with a constant schedule)
# may change between a run and its resumption.
TRAJECTORY_KEYS = (
    "dataset",
    "model",
    "mlp_hidden",
    "cnn_channels",
    "cnn_dense",
    "cnn_pool",
    "width",
    "dtype",
    "batch_size",
    "optimizer",
    "learning_rate",
    "momentum",
    "weight_decay",
    "schedule",
    "warmup_fraction",
    "seed",
    "augment_translate",
    "augment_flip",
    "augment_cutout",
    "norm",
    "dropout",
    "label_smoothing",
    "ema_decay",
    "nesterov",
)


def setup(
    config: ml_collections.ConfigDict, devices: list, plan: plan_lib.Plan, print_fn: Callable[[str], Any] = print
) -> Run:
    """Prepares the data, builds the run of the resolved ``plan`` on ``devices`` and places the data there."""
    config, train, test = _load_data(config, print_fn)
    run = build(config, devices, plan=plan, steps_per_epoch=batches.steps_per_epoch(len(train), config.batch_size))
    place_data(run, train, test)
    return run


def _load_data(config: ml_collections.ConfigDict, print_fn) -> tuple[ml_collections.ConfigDict, Any, Any]:
    """(config recording the data dir it read, train split, test split); refuses a batch larger than the split."""
    builder, source = _prepare_data(config)
    if not config.data_dir:  # record where the data is: eval, predict and report then read the run's own
        config = config.copy_and_resolve_references()
        config.data_dir = str(Path(builder.data_dir).parents[1])  # DATA_DIR/NAME/VERSION
    print_fn(f"training {config.model} on {config.dataset} ({source})")
    train, test = datasets.load_split(builder, "train"), datasets.load_split(builder, "test")
    if config.batch_size > len(train):
        raise ConfigError(
            f"config.batch_size={config.batch_size}: larger than the training split ({len(train)} examples)"
        )
    return config, train, test


def _prepare_data(config: ml_collections.ConfigDict) -> tuple[Any, str]:
    """Prepares the dataset (process 0 first, so processes sharing a data dir never write it together)."""
    if not runtime.is_main_process():
        runtime.barrier("harness-data-prepared")
    found = datasets.ensure_prepared(config.dataset, config.data_dir or None)
    if runtime.is_main_process():
        runtime.barrier("harness-data-prepared")
    return found


def default_hooks(config, workdir: Path, print_fn: Callable[[str], Any] = print) -> list[hooks_lib.Hook]:
    """Metrics file, TensorBoard, progress bar and console lines."""
    return [
        hooks_lib.MetricsFile(workdir),
        hooks_lib.TensorBoard(workdir),
        hooks_lib.ProgressBar(config.num_epochs),
        hooks_lib.Console(config.num_epochs, print_fn),
    ]


def trajectory_changes(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
    """``key (old → new)`` for every trajectory key that differs between a saved config and ``config`` (a key the
    saved config predates counts as today's default)."""
    keys = list(TRAJECTORY_KEYS) + (["num_epochs"] if config.schedule != "constant" else [])
    current = json.loads(config.to_json_best_effort())
    saved = {**json.loads(config_lib.base_config().to_json_best_effort()), **saved}
    return [f"{k} ({saved.get(k)!r} → {current.get(k)!r})" for k in keys if saved.get(k) != current.get(k)]


def _refuse_changes(saved: dict, config: ml_collections.ConfigDict, workdir: Path) -> None:
    changes = trajectory_changes(saved, config)
    if changes:
        raise WorkdirError(
            f"{workdir} holds a run with other settings: {', '.join(changes)}; resuming would change its "
            f"trajectory. Train into a new --workdir (add --config.init_from={workdir} to start from its parameters)"
        )


def _resume(run: Run, ckpt: Checkpoints, workdir: Path, print_fn) -> Progress | None:
    try:
        found = ckpt.restore_latest(run.host_state)
    except ForeignCheckpointError:  # e.g. norm or ema_decay changed the state's parts: name the settings
        good = ckpt.good_steps()
        if good:
            _refuse_changes(ckpt.read_meta(good[-1]).get("config", {}), run.config, workdir)
        raise
    if found is None:
        return None
    step, state, saved = found
    meta = CheckpointMeta.from_dict(saved)
    _refuse_changes(meta.config, run.config, workdir)
    if meta.num_train != run.num_train or meta.steps_per_epoch != run.steps_per_epoch:
        raise WorkdirError(f"{workdir}: its checkpoint was made on a training split of {meta.num_train} examples")
    run.state = run.par.replicate(state)
    fp, record = meta.fingerprint, ckpt.record(step) or {}
    where = describe_position(meta.epoch, meta.step_in_epoch, run.steps_per_epoch, run.config.num_epochs)
    number = f"{step:,}".replace(",", " ")
    print_fn(
        f"resumed from step {number} ({where}), saved on {fp['platform']}×{fp['device_count']} "
        f"at {record.get('saved_at', '?')}"
    )
    return Progress.from_meta(meta)


def _init_from(run: Run, source: str, print_fn) -> None:
    found = restore_latest(run, Path(source), warn=print_fn)
    if found is None:
        raise WorkdirError(f"config.init_from={source!r}: no checkpoint there restores")
    step, state, _ = found
    run.state = run.par.replicate(steps.start_from(run.host_state, state))
    print_fn(f"initialised the parameters from {source} (step {step}); step, optimizer and data order start anew")


def _joins_others(config: ml_collections.ConfigDict) -> bool:
    """Whether this run may join other processes (``config.distributed``, else ``HARNESS_DISTRIBUTED``)."""
    return bool(settings.load().distributed if config.distributed is None else config.distributed)


def _silent(*args, **kwargs) -> None:
    """The print function of every process but process 0."""


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    hooks: Sequence[hooks_lib.Hook] | None = None,
    print_fn: Callable[[str], Any] = print,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """Trains ``config`` into ``workdir``, resuming from its latest good checkpoint, and returns the summary.

    The summary has ``test_accuracy``, ``test_loss``, ``step``, ``time_to_first_step_seconds`` (from this call to
    the first finished step: data, compilation and one step)…; after SIGTERM/SIGINT it has ``stopped`` instead.
    With ``config.distributed`` every process of the run calls this with the same arguments; only process 0
    prints and writes logs, all of them take part in checkpoints (``workdir`` must be on a shared file system).
    """
    started = clock()
    if _joins_others(config):  # every process stops at a step JAX's service picks, even one asked for now
        preemption.steps_started()
    multi_process = runtime.initialize_distributed(config.distributed) and jax.process_count() > 1
    main = runtime.is_main_process()
    print_fn = print_fn if main else _silent
    devices = runtime.select_devices(config.num_devices)
    plan = plan_lib.resolve(config, devices)  # the one validation of the config
    workdir = workdir_lib.check(workdir)  # resolved; nothing created yet
    runtime.enable_compilation_cache(announce=print_fn)  # says so once per process
    print_fn(f"plan: {plan.describe()}")
    run = setup(config, devices, plan, print_fn)
    with workdir_lib.claimed(workdir, main):
        runtime.barrier("harness-workdir-claimed")
        ckpt = Checkpoints(workdir, keep=config.keep_checkpoints, keep_best=config.keep_best, warn=print_fn)
        try:
            progress = _start(run, ckpt, workdir, print_fn)
            if progress.step >= config.num_epochs * run.steps_per_epoch:
                return _already_trained(run, progress, print_fn)
            if hooks is None:
                hooks = default_hooks(config, workdir, print_fn) if main else []
            with StopSignals(multi_process) as stop:
                loop = Loop(
                    run,
                    ckpt,
                    progress,
                    hooks=hooks,
                    print_fn=print_fn,
                    clock=clock,
                    stop=stop.check,
                    started=started,
                    profile_dir=Path(workdir) / "profile",
                )
                summary = loop()
            _finish(summary, run.config, ckpt, workdir, print_fn)
            return summary
        finally:
            ckpt.close()


def _start(run: Run, ckpt: Checkpoints, workdir: Path, print_fn) -> Progress:
    """Resumes (or initialises) the run and writes its config and metric history into the workdir."""
    config = run.config
    progress = _resume(run, ckpt, workdir, print_fn)
    if progress is None:
        progress = Progress()
        if config.init_from:
            _init_from(run, config.init_from, print_fn)
    if runtime.is_main_process():
        write_atomic(workdir / "config.json", config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
        history = "".join(json.dumps(r, sort_keys=True) + "\n" for r in progress.history)
        write_atomic(workdir / "metrics.jsonl", history)
    return progress


def _already_trained(run: Run, progress: Progress, print_fn) -> dict:
    print_fn(
        f"already trained: step {progress.step} ≥ {run.config.num_epochs} epoch(s) × {run.steps_per_epoch} steps; "
        "raise --config.num_epochs to go on"
    )
    last = {k: v for k, v in (rows_of(progress.history, "eval") or [{}])[-1].items() if k != "kind"}
    return {**last, "step": progress.step, "train_seconds": progress.train_seconds}


def _finish(summary: dict, config: ml_collections.ConfigDict, ckpt: Checkpoints, workdir: Path, print_fn) -> None:
    """The report of a finished run, or how to resume a stopped one."""
    if "stopped" in summary:
        print_fn(
            f"stopped by {summary['stopped']} at step {summary['step']}; checkpoint saved in {ckpt.directory}. "
            f"Resume with the same command (harness train ... --workdir {workdir})"
        )
    elif config.report:
        ckpt.finalize()  # every process: a save ends with a barrier
        if runtime.is_main_process():
            from harness.report import write_report

            print_fn(f"report: {write_report(workdir)}")
