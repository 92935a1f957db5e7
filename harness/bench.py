"""``harness bench``: honest throughput of the train step, one grid point at a time.

Timing protocol: compile ahead of time and report it apart (with the time to the first finished step); run
warm-up dispatches and discard them; then time ≥ 5 windows of several dispatches, each closed by one
``block_until_ready`` (never a host sync per step), and report the median, p10 and p90 step time. FLOPs and
bytes per step come from XLA's cost analysis of the compiled single step; :mod:`harness.roofline` turns them into
achieved FLOP/s, arithmetic intensity, MFU against the datasheet (:mod:`harness.peaks`) and the fraction of the
measured ceiling (:mod:`harness.ceiling`). Memory: the devices' peak in use where they report it, the host's
peak RSS. A batch sweep ends at the first size that runs out of memory and says so.
"""

from __future__ import annotations

import dataclasses
import itertools
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from harness import config as config_lib
from harness import models, parallel, roofline, runtime
from harness import plan as plan_lib
from harness.build import build
from harness.data import batches
from harness.errors import ConfigError, OutOfMemoryError

# device: random examples as many as a training split, resident on the device, each step gathering its batch in
# training's order; host: those batches gathered in numpy and sent with each step; synthetic: one batch generated
# on the device (any size, no host copy), the same every step: pure compute.
DATA_MODES = ("device", "host", "synthetic")
RESIDENT_EXAMPLES = 60000  # device mode: as many as the MNIST-format training splits


@dataclasses.dataclass(frozen=True)
class Point:
    """One grid point."""

    model: str = "cnn"
    batch_size: int = 128
    dtype: str = "float32"
    parallel: str = "pmap"
    data: str = "device"
    steps_per_dispatch: int = 0  # 0 = auto: what `harness train` picks on these devices (see resolve)
    num_devices: int = 0
    conv: str = "auto"
    micro_batches: int = 0
    width: int = 1  # multiplies the model's widths (config.width)


def label(point: Point) -> str:
    """A point in a few words, for progress lines: ``cnn w1 b128 float32 pmap device ×16``."""
    p = point
    return f"{p.model} w{p.width} b{p.batch_size} {p.dtype} {p.parallel} {p.data} ×{p.steps_per_dispatch or 'auto'}"


def resolve(point: Point) -> Point:
    """``point`` with ``steps_per_dispatch=0`` (auto) replaced by the count ``harness train`` runs with the default
    logging and checkpoint intervals on these devices (1 with host data), so the default point is training's path."""
    if point.steps_per_dispatch:
        return point
    if point.data == "host":
        return dataclasses.replace(point, steps_per_dispatch=1)
    c = config_lib.base_config()
    devices = runtime.select_devices(point.num_devices)
    k = plan_lib.steps_per_dispatch(0, devices, c.log_every_steps, c.checkpoint_every_steps)
    return dataclasses.replace(point, steps_per_dispatch=k)


def _config(point: Point) -> Any:
    c = config_lib.base_config()
    c.update(model=point.model, batch_size=point.batch_size, dtype=point.dtype, parallel=point.parallel)
    c.conv, c.micro_batches = point.conv, point.micro_batches
    c.num_devices, c.width = point.num_devices, point.width
    return c


def _memory(devices: list) -> dict:
    """The most any device has in use and its peak so far (None where devices do not report it, e.g. CPUs), and
    this process's peak resident memory so far (the host's share; on a CPU, the devices' too)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    stats = [d.memory_stats() for d in devices if hasattr(d, "memory_stats")]
    stats = [s for s in stats if s]
    if not stats:
        return {"bytes_in_use": None, "peak_bytes_in_use": None, "host_peak_rss_bytes": rss}
    device = {k: max(s.get(k, 0) for s in stats) for k in ("bytes_in_use", "peak_bytes_in_use")}
    return {**device, "host_peak_rss_bytes": rss}


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def time_windows(
    dispatch: Callable[[], Any],
    sync: Callable[[Any], Any],
    windows: int,
    dispatches_per_window: int,
    steps_per_dispatch: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Seconds per step of each window: ``dispatches_per_window`` calls of ``dispatch`` closed by one ``sync``."""
    step_times = []
    for _ in range(windows):
        t0 = clock()
        out = None
        for _ in range(dispatches_per_window):
            out = dispatch()
        sync(out)  # one host sync per window
        step_times.append((clock() - t0) / (dispatches_per_window * steps_per_dispatch))
    return step_times


def summarize(step_times: list[float], batch_size: int, devices: int = 1, chips: int | None = None) -> dict:
    """Median/p10/p90 step time and throughput from :func:`time_windows` (shared by the peers)."""
    median = statistics.median(step_times)
    return {
        "step_seconds_median": median,
        "step_seconds_p10": _percentile(step_times, 10),
        "step_seconds_p90": _percentile(step_times, 90),
        "windows": len(step_times),
        "examples_per_sec": batch_size / median,
        "examples_per_sec_per_device": batch_size / median / devices,
        "examples_per_sec_per_chip": batch_size / median / (chips or devices),
    }


def synthetic_examples(n: int, seed: int = 0) -> dict:
    """``n`` random uint8 images and labels from ``jax.random`` (deterministic; to run on the devices:
    :meth:`harness.parallel.Parallel.generate`)."""
    image_key, label_key = jax.random.split(jax.random.key(seed))
    return {
        "image": jax.random.bits(image_key, (n, 28, 28, 1), jnp.uint8),
        "label": jax.random.randint(label_key, (n,), 0, 10, jnp.int32),
    }


class _Runner:
    """Holds the placed state and data of one point and dispatches its steps."""

    def __init__(self, point: Point, seed: int = 0):
        if point.data not in DATA_MODES:
            raise ConfigError(f"data mode {point.data!r}: allowed: {', '.join(DATA_MODES)}")
        if point.steps_per_dispatch < 1 or (point.steps_per_dispatch > 1 and point.data == "host"):
            raise ConfigError(f"steps_per_dispatch={point.steps_per_dispatch}: ≥ 1, and 1 with host data")
        self.point, self.config = point, _config(point)
        devices = runtime.select_devices(point.num_devices)
        plan = plan_lib.resolve(self.config, devices)  # a point runs its own steps per dispatch:
        self.plan = dataclasses.replace(plan, steps_per_dispatch=point.steps_per_dispatch)
        run = build(self.config, devices, plan=self.plan, steps_per_epoch=1000)
        self.par, self.state = run.par, run.state
        self.params = sum(int(np.size(p)) for p in jax.tree.leaves(run.host_state.params))
        self.cursor = 0
        self._place_data(seed)

    def _place_data(self, seed: int) -> None:
        """The point's data mode: one synthetic batch made on the devices (its indices placed once), or random
        examples as many as a training split on the host, placed on the devices unless fed from the host."""
        bs = self.point.batch_size
        if self.point.data == "synthetic":
            self.n, self.host = bs, None
            self.data = self.par.generate(partial(synthetic_examples, bs, seed))
            self.fixed = self.par.shard_indices(self._indices())
            return
        rng = np.random.default_rng(seed)
        self.n = max(RESIDENT_EXAMPLES, 2 * bs)
        self.host = {
            "image": rng.integers(0, 256, (self.n, 28, 28, 1), dtype=np.uint8),
            "label": rng.integers(0, 10, self.n).astype(np.int32),
        }
        self.data = self.par.replicate(self.host) if self.point.data == "device" else None

    def _indices(self) -> np.ndarray:
        k, bs = self.point.steps_per_dispatch, self.point.batch_size
        if self.point.data == "synthetic":
            every = np.arange(bs, dtype=np.int32)
            return every if k == 1 else np.tile(every, (k, 1))
        spe = batches.steps_per_epoch(self.n, bs) - 1  # full batches only: every step does the same work
        rows = []
        for _ in range(k):
            epoch, s = divmod(self.cursor, spe)
            rows.append(batches.batch_indices(0, epoch, s, bs, self.n))
            self.cursor += 1
        return rows[0] if k == 1 else np.stack(rows)

    def args(self) -> tuple:
        """The arguments of the next dispatch (host mode: gathers the batch on the host and sends it; synthetic
        data: the same placed indices every time, nothing sent)."""
        if self.point.data == "synthetic":
            return self.data, self.fixed
        idx = self._indices()
        if self.point.data == "host":
            batch = {"image": self.host["image"][idx], "label": self.host["label"][idx]}
            batch["weight"] = np.ones(len(idx), np.float32)
            return (self.par.shard_batch(batch),)
        return self.data, self.par.shard_indices(idx)

    @property
    def name(self) -> str:
        if self.point.data == "host":
            return "train_batch"
        return "train" if self.point.steps_per_dispatch == 1 else "train_steps"

    def step_cost(self, compiled) -> dict:
        """FLOPs and bytes accessed of one step's per-device program, from XLA's cost analysis of the compiled
        plain step (:func:`harness.roofline.cost`). A
        ``lax.scan`` program (fused steps, micro-batches) counts its body once, so when ``compiled`` is one of those
        the plain step of the same point is compiled and analysed instead."""
        if self.name != "train" or self.plan.micro_batches != 1:
            data = "synthetic" if self.point.data == "synthetic" else "device"
            plain = _Runner(dataclasses.replace(self.point, steps_per_dispatch=1, data=data, micro_batches=1))
            indices = plain.par.shard_indices(plain._indices())
            compiled = plain.par.lower("train", plain.state, plain.data, indices).compile()
        return roofline.cost(compiled.cost_analysis())  # pmap and jit alike: the per-device program


def measure(
    point: Point,
    windows: int = 5,
    dispatches_per_window: int = 8,
    warmup: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """Measures one grid point; returns its figures (step times in seconds, throughput in examples/s)."""
    if windows < 5:
        raise ConfigError(f"windows={windows}: at least 5 timing windows are needed for p10/p90")
    start = clock()
    point = resolve(point)
    runner = _Runner(point)
    args = runner.args()
    t0 = clock()
    compiled = runner.par.lower(runner.name, runner.state, *args).compile()
    compile_seconds = clock() - t0
    parallel.check_memory([compiled], runner.par.devices)  # too big for the devices: OutOfMemoryError, now
    state, sums = compiled(runner.state, *args)
    jax.block_until_ready(sums)
    time_to_first_step = clock() - start
    for _ in range(warmup):
        state, sums = compiled(state, *runner.args())
    jax.block_until_ready(sums)
    k = point.steps_per_dispatch
    current = [state]

    def dispatch():
        current[0], sums = compiled(current[0], *runner.args())
        return sums

    step_times = time_windows(dispatch, jax.block_until_ready, windows, dispatches_per_window, k, clock)
    devices = runner.par.devices
    figures = {
        "plan": runner.plan.to_dict(),
        "conv_impl": runner.plan.conv,
        "micro_batches": runner.plan.micro_batches,
        "params": runner.params,
        "compile_seconds": compile_seconds,
        "time_to_first_step_seconds": time_to_first_step,
        **summarize(step_times, point.batch_size, len(devices), runtime.chip_count(devices)),
        "steps_per_window": dispatches_per_window * k,
        "loss_finite": bool(np.isfinite(runner.par.metrics_to_host(dispatch())["loss"])),
        **_memory(devices),
    }
    cost = runner.step_cost(compiled)
    figures.update(roofline.figures(cost, figures["step_seconds_median"], point.batch_size, devices, point.dtype))
    return figures


def grid(
    models_: list[str],
    batch_sizes: list[int],
    dtypes: list[str],
    strategies: list[str],
    data_modes: list[str],
    steps_per_dispatch: list[int],
    num_devices: int = 0,
    convs: tuple[str, ...] = ("auto",),
    widths: Sequence[int] | Mapping[str, Sequence[int]] = (1,),
) -> Iterator[Point]:
    """Every combination, model by model and width by width (the scale axis: the same ``widths`` for every model,
    or each model's own, width 1 for a model without), skipping fused steps with host data (not supported);
    convolution variants apply to CNNs only."""
    for m in models_:
        ladder = widths.get(m, (1,)) if isinstance(widths, Mapping) else widths
        for w, bs, dt, par, data, k in itertools.product(
            ladder, batch_sizes, dtypes, strategies, data_modes, steps_per_dispatch
        ):
            if data == "host" and k > 1:
                continue
            for conv in convs if models.family(m) == "cnn" else ("auto",):
                yield Point(m, bs, dt, par, data, k, num_devices, conv, width=w)


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says memory ran out: XLA's RESOURCE_EXHAUSTED, harness's own check before the first step
    (:class:`OutOfMemoryError`), or the host's MemoryError."""
    if isinstance(error, OutOfMemoryError | MemoryError):
        return True
    return "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()


def sweep(
    point: Point,
    max_batch: int = 65536,
    patience: int = 2,
    min_gain: float = 0.05,
    before: Callable[[Point], Any] = lambda p: None,
    **kw,
) -> list[dict]:
    """Doubles the batch size from ``point.batch_size`` until throughput stops improving by ``min_gain`` for
    ``patience`` steps, memory runs out, or ``max_batch``; returns one ``(point, figures)`` dict per size tried,
    the last with ``figures`` None, ``stopped`` "out of memory" and the ``error``'s first line if memory ran out.
    ``before(point)`` is called before each size is measured (a progress line)."""
    results, best, stale, bs = [], 0.0, 0, point.batch_size
    while bs <= max_batch and stale < patience:
        p = dataclasses.replace(point, batch_size=bs)
        before(p)
        try:
            figures = measure(p, **kw)
        except (jax.errors.JaxRuntimeError, OutOfMemoryError, MemoryError) as e:  # out of memory ends the walk
            if not out_of_memory(e):
                raise
            error = (str(e).strip().splitlines() or [type(e).__name__])[0]
            results.append({"point": p, "figures": None, "stopped": "out of memory", "error": error})
            break
        results.append({"point": p, "figures": figures})
        gain = figures["examples_per_sec"] / best - 1 if best else 1.0
        stale = 0 if gain >= min_gain else stale + 1
        best = max(best, figures["examples_per_sec"])
        bs *= 2
    return results


def time_to_accuracy(
    config_name: str,
    target: float,
    seeds: list[int],
    overrides: list[str] = (),
    workdir: Path | None = None,
    clock: Callable[[], float] = time.perf_counter,
    print_fn: Callable[[str], Any] = lambda _: None,
) -> dict:
    """MLPerf style: wall seconds from start (data loading and compilation included) to the first evaluation at
    or above ``target``, for each seed; median and spread over the seeds that reached it. ``print_fn`` gets a line
    per seed and epoch. A stop (SIGINT or SIGTERM where :mod:`harness.preemption`'s handlers are installed) ends the
    current seed: the figures are the finished seeds', with ``stopped`` saying what stopped them."""
    import tempfile

    from harness import hooks, preemption
    from harness.train import train_and_evaluate

    runs, stopped = [], None
    for n, seed in enumerate(seeds, 1):
        stopped = preemption.stop_requested()
        if stopped:
            break
        c = config_lib.load(config_name, [*overrides, f"seed={seed}", f"stop_at_accuracy={target}", "report=false"])
        print_fn(f"seed {seed} ({n} of {len(seeds)}): training {config_name} until test_accuracy {target}")
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            t0 = clock()
            lines = hooks.EpochLines(f"seed {seed}", c.num_epochs, print_fn, clock, t0)
            summary = train_and_evaluate(c, Path(tmp) / "run", hooks=[lines], print_fn=lambda _: None)
            seconds = clock() - t0
        stopped = summary.get("stopped")
        if stopped:  # cut short: not a result
            break
        reached = summary.get("reached_target_epoch")
        runs.append({"seed": seed, "seconds": seconds, "epochs": reached, "accuracy": summary.get("test_accuracy")})
    figures = _tta_figures(runs)
    if stopped:
        figures["stopped"] = f"{stopped} after {len(runs)} of {len(seeds)} seeds"
    return figures


def _tta_figures(runs: list[dict]) -> dict:
    """The median and spread of the seconds of the ``runs`` that reached the target."""
    times = [r["seconds"] for r in runs if r["epochs"]]
    return {
        "seeds": len(runs),
        "reached": len(times),
        "median_seconds": statistics.median(times) if times else float("nan"),
        "min_seconds": min(times) if times else float("nan"),
        "max_seconds": max(times) if times else float("nan"),
        "runs": runs,
    }
