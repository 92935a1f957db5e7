"""``build(config, devices) -> Run``: the one place a run is set up, for train, bench, eval/predict, report and
the tests.

``build`` resolves the plan (the run's one validation of its config), makes the optimizer, the model and its
freshly initialised state, and the step wrappers (:class:`~harness.parallel.Parallel`), and places the state.
Data is placed apart (:func:`place_data`), so a caller without a training split (eval, predict, report), with
synthetic data (bench) or with no data at all (a test that only needs the state's shape) builds the same way.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import ml_collections
import numpy as np

from harness import config as config_lib
from harness import models, parallel, runtime, steps
from harness import plan as plan_lib
from harness.checkpoint import Checkpoints
from harness.errors import OutOfMemoryError

if TYPE_CHECKING:
    from harness.data.datasets import Split


@dataclasses.dataclass
class Run:
    """What the loop works with: the plan and its strategy, the placed state and data, and the batch geometry."""

    config: ml_collections.ConfigDict
    plan: plan_lib.Plan
    par: parallel.Parallel
    host_state: Any  # the freshly initialised state as host arrays: what a checkpoint restores into
    state: Any  # placed on the devices
    steps_per_epoch: int = 1
    train: dict | None = None
    test: dict | None = None
    num_train: int = 0
    num_test: int = 0

    @property
    def steps_per_dispatch(self) -> int:
        return self.plan.steps_per_dispatch


def build(
    config: ml_collections.ConfigDict,
    devices: list | None = None,
    *,
    plan: plan_lib.Plan | None = None,
    steps_per_epoch: int = 1,
) -> Run:
    """The run of ``config`` on ``devices`` (default: ``config.num_devices`` of :func:`harness.runtime.select_devices`),
    its initial state placed. ``plan``: one already resolved for these devices (the config is then not checked
    again), else it is resolved here. ``steps_per_epoch`` paces the learning-rate schedule."""
    devices = runtime.select_devices(config.num_devices) if devices is None else list(devices)
    plan = plan_lib.resolve(config, devices) if plan is None else plan
    tx = steps.make_optimizer(config, steps_per_epoch)
    options = steps.Options.from_config(config)
    ema = options.ema_decay > 0
    free = parallel.free_bytes(devices)  # measured before anything of this run is allocated
    state_size = _check_state_fits(config, plan, tx, ema, devices, free)
    budget = parallel.Budget(free, state_size, config.width)  # the compiled steps are checked against the same
    _check_step_fits(config, plan, tx, ema, devices, options, budget)
    if runtime.is_abstract(devices):  # a described TPU slice (harness.topology): shapes only, nothing allocated
        graphdef, host_state = _traced(config, plan, tx, ema)
    else:
        graphdef, initial = steps.init_state(models.create(config, plan.conv), tx, ema=ema)
        host_state = jax.device_get(initial)
    par = parallel.Parallel(plan.strategy, devices, graphdef, tx, plan.micro_batches, options)
    par.budget = budget
    return Run(config, plan, par, host_state, par.replicate(host_state), steps_per_epoch)


def state_bytes(config: ml_collections.ConfigDict, plan: plan_lib.Plan, tx, ema: bool) -> int:
    """Bytes of the train state ``build`` would make (parameters, optimizer moments, BatchNorm statistics, EMA),
    from its shapes alone: nothing is allocated."""
    return _sizes(config, plan, tx, ema)[0]


def _sizes(config: ml_collections.ConfigDict, plan: plan_lib.Plan, tx, ema: bool) -> tuple[int, int]:
    """(bytes of the train state, bytes of its parameters), from shapes alone."""
    _, abstract = _traced(config, plan, tx, ema)

    def size(tree: Any) -> int:
        return sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))

    return size(abstract), size(abstract.params)


def _check_state_fits(
    config: ml_collections.ConfigDict, plan: plan_lib.Plan, tx, ema: bool, devices: list, free: int | None
) -> int | None:
    """Stops with one line, before anything is allocated, when the train state and its gradients (what a train step
    holds at the least) cannot fit in a device's ``free`` memory (a too-large ``width`` or layer size would
    otherwise allocate for minutes and end in an allocation failure or the OOM killer). Returns the state's bytes;
    None where :func:`harness.parallel.free_bytes` makes no check (several processes, unknown memory): nothing is
    traced then."""
    if free is None:
        return None
    state, params = _sizes(config, plan, tx, ema)
    if state + params > free:
        raise OutOfMemoryError(
            f"{_knob(config)}: the model's train state and gradients alone need "
            f"{_gib(state + params)} per device but {devices[0].platform} has {_gib(max(free, 0))} free per device: "
            f"use a smaller config.width or model"
        )
    return state


def _traced(config: ml_collections.ConfigDict, plan: plan_lib.Plan, tx, ema: bool) -> tuple[Any, Any]:
    """(graph definition, train state of ``jax.ShapeDtypeStruct`` leaves) of the model ``build`` would make, traced
    and never run (a described TPU slice's model may be far larger than this host's memory)."""
    made = {}

    def init():
        made["graphdef"], state = steps.init_state(models.create(config, plan.conv), tx, ema=ema)
        return state

    abstract = jax.eval_shape(init)
    return made["graphdef"], abstract


def _check_step_fits(
    config: ml_collections.ConfigDict,
    plan: plan_lib.Plan,
    tx,
    ema: bool,
    devices: list,
    options: steps.Options,
    budget: parallel.Budget,
) -> None:
    """When the train state takes more than a quarter of the free memory, XLA's estimate of the train step (compiled
    from shapes alone, a few seconds) is checked before anything is allocated: its optimizer temporaries may need
    what the state left (the width that fits the state may allocate for minutes before the compiled step's check).
    Smaller models are checked once their steps are compiled, as before."""
    if budget.free is None or budget.state is None or 4 * budget.state <= budget.free:
        return
    graphdef, abstract = _traced(config, plan, tx, ema)
    par = parallel.Parallel(plan.strategy, devices, graphdef, tx, plan.micro_batches, options)
    n, batch = len(devices), config.batch_size
    lead = (n,) if plan.strategy == "pmap" else ()  # pmap's leading device axis

    def shaped(shape: tuple, dtype) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((*lead, *shape), dtype)

    state = jax.tree.map(lambda x: shaped(x.shape, x.dtype), abstract)
    data = {"image": shaped((batch, 28, 28, 1), np.uint8), "label": shaped((batch,), np.int32)}  # a batch's worth
    indices = jax.ShapeDtypeStruct((n, batch // n) if lead else (batch,), np.int32)
    parallel.check_memory([par.lower("train", state, data, indices).compile()], devices, budget)


def _knob(config: ml_collections.ConfigDict) -> str:
    """The setting that makes the model too large: its width when widened, else the model."""
    return f"config.width={config.width}" if config.width > 1 else f"config.model={config.model}"


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.1f} MiB"


def place_data(run: Run, train: Split | None = None, test: Split | None = None) -> None:
    """Places the given splits on the run's devices, once: the steps gather their batches there."""
    if train is not None:
        run.train, run.num_train = run.par.replicate({"image": train.images, "label": train.labels}), len(train)
    if test is not None:
        run.test, run.num_test = run.par.replicate({"image": test.images, "label": test.labels}), len(test)


def restore_latest(run: Run, workdir: Path, warn: Callable[[str], Any]) -> tuple[int, Any, dict] | None:
    """(step, host state, metadata) of the latest good checkpoint of another run's ``workdir``, opened read-only
    and restored into this run's state shape; None when none restores."""
    ckpt = Checkpoints(workdir, create=False, warn=warn)
    try:
        return ckpt.restore_latest(run.host_state)
    finally:
        ckpt.close()


def saved_config(saved: dict, **overrides: Any) -> ml_collections.ConfigDict:
    """A run's config as saved (config.json, checkpoint metadata) on the defaults of today's keys, with
    ``overrides``: what :func:`build` takes to rebuild that run's model."""
    config = config_lib.base_config()
    config.update({**saved, "mlp_hidden": tuple(saved.get("mlp_hidden", config.mlp_hidden)), **overrides})
    return config
