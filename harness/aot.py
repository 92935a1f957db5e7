"""A run's steps compiled ahead of time for a described TPU slice (:mod:`harness.topology`): whether they compile,
the memory they need per device against its HBM, XLA's FLOPs and bytes, and the step time XLA's TPU cost model
predicts. Predictions, never measurements: the ledger keeps them as rows of their own kind (``predicted``).

The run is set up exactly as ``harness train`` sets it up — :func:`harness.plan.resolve`, :func:`harness.build.build`,
:func:`harness.build.place_data` and :meth:`harness.parallel.Parallel.compile` — with the slice's abstract devices
where real ones go: the state and the device-resident splits are ``jax.ShapeDtypeStruct`` s, nothing is allocated.

Memory per device is XLA's: arguments + outputs + temporaries − the donated (aliased) buffers + the generated code,
against the chip's HBM divided among its devices (a TPU v2/v3 chip is two devices with 8/16 GiB each). The step
time is XLA's ``optimal_seconds`` where it gives one (> 0), else a roofline of the step's FLOPs and bytes against the
chip's datasheet peak and bandwidth (libtpu 0.0.42.1 gives −4 s for some v5e programs: no prediction), and says
which. :func:`fit` finds the largest global batch whose steps fit, by memory analysis alone.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from harness import peaks, roofline, runtime
from harness import plan as plan_lib
from harness.build import build, place_data
from harness.data import NAMES, batches
from harness.errors import HarnessError
from harness.topology import Slice

SHIPPED_SPLITS = {"train": 60000, "test": 10000}  # the MNIST-format datasets harness ships


@dataclasses.dataclass(frozen=True)
class Memory:
    """XLA's memory analysis of one compiled program, bytes per device."""

    arguments: int
    outputs: int
    temporaries: int
    aliased: int
    code: int

    @property
    def total(self) -> int:
        return self.arguments + self.outputs + self.temporaries - self.aliased + self.code

    @classmethod
    def of(cls, compiled) -> Memory:
        m = compiled.memory_analysis()
        m = m[0] if isinstance(m, list | tuple) else m
        return cls(
            m.argument_size_in_bytes,
            m.output_size_in_bytes,
            m.temp_size_in_bytes,
            m.alias_size_in_bytes,
            m.generated_code_size_in_bytes,
        )


class _Shapes:
    """A split as shapes only (what :func:`harness.build.place_data` reads of it): nothing is allocated."""

    def __init__(self, n: int):
        self.images = np.broadcast_to(np.zeros((), np.uint8), (n, 28, 28, 1))
        self.labels = np.broadcast_to(np.zeros((), np.int32), (n,))

    def __len__(self) -> int:
        return len(self.labels)


def split_sizes(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(train, test) examples of the config's dataset: the shipped datasets' sizes, or an imported one's from its
    prepared tfds files."""
    if config.dataset in NAMES:
        return SHIPPED_SPLITS["train"], SHIPPED_SPLITS["test"]
    from harness.data import datasets

    info = datasets.builder(config.dataset, config.data_dir or None).info
    return info.splits["train"].num_examples, info.splits["test"].num_examples


def _program(name: str, compiled, hbm: float | None) -> dict:
    memory = Memory.of(compiled)
    return {**dataclasses.asdict(memory), "total": memory.total, "fits": hbm is None or memory.total <= hbm}


def _cost(config: ml_collections.ConfigDict, devices: list, plan: plan_lib.Plan, compiled) -> dict:
    """XLA's cost analysis of one plain train step per device. A ``lax.scan`` (micro-batches) counts its body once:
    with micro-batches, a twin run without them is compiled for its cost (the same FLOPs, counted whole)."""
    if plan.micro_batches > 1:
        twin = config.copy_and_resolve_references()
        twin.micro_batches = 1
        plain = compile_programs(twin, devices, dataclasses.replace(plan, micro_batches=1), steps=1)
        compiled = plain["programs"]["train"]
    analysis = compiled.cost_analysis()
    analysis = (analysis[0] if isinstance(analysis, list | tuple) else analysis) or {}
    optimal = analysis.get("optimal_seconds")
    return {**roofline.cost(analysis), "optimal_seconds": float(optimal) if optimal is not None else None}


def compile_programs(
    config: ml_collections.ConfigDict, devices: list, plan: plan_lib.Plan, steps: int | None = None
) -> dict:
    """Builds the run of ``config`` on ``devices`` as ``harness train`` would and compiles its train (and fused
    train) and eval steps; ``{"programs": {name: compiled}, "seconds": compile seconds}``."""
    train_size, test_size = split_sizes(config)
    run = build(config, devices, plan=plan, steps_per_epoch=batches.steps_per_epoch(train_size, config.batch_size))
    place_data(run, _Shapes(train_size), _Shapes(test_size))
    indices = run.par.shard_indices(batches.eval_indices(0, config.batch_size, test_size))
    start = time.perf_counter()
    run.par.compile(run.state, run.train, run.test, indices, plan.steps_per_dispatch if steps is None else steps)
    return {"programs": run.par.compiled(), "seconds": time.perf_counter() - start}


def resolve(config: ml_collections.ConfigDict, tpu: Slice) -> tuple[list, plan_lib.Plan]:
    """The devices of ``tpu`` the config uses (``config.num_devices``, 0 = all) and the run's plan on them (the
    slice's hosts as its processes)."""
    devices = list(tpu.devices)
    if config.num_devices > len(devices):
        raise HarnessError(f"config.num_devices={config.num_devices}: {tpu.name} has {len(devices)} device(s)")
    devices = devices[: config.num_devices or None]
    plan = plan_lib.resolve(config, devices)
    return devices, dataclasses.replace(plan, processes=len({d.process_index for d in devices}))


def predict(config: ml_collections.ConfigDict, tpu: Slice) -> dict:
    """Compiles the run of ``config`` for ``tpu``; its figures: plan, memory per program against the HBM per device,
    XLA's FLOPs and bytes per step, the predicted step time and where it came from, examples/s and MFU. A step
    that does not compile raises :class:`CompileError` with XLA's first line."""
    devices, plan = resolve(config, tpu)
    try:
        compiled = compile_programs(config, devices, plan)
    except HarnessError:
        raise
    except Exception as e:  # XLA's words (e.g. RESOURCE_EXHAUSTED: the step does not fit): one line
        raise CompileError(first_line(e)) from None
    kind, per_chip = tpu.device_kind, len(devices) // runtime.chip_count(devices)
    hbm = hbm_per_device(devices)
    programs = {name: _program(name, c, hbm) for name, c in compiled["programs"].items()}
    try:
        cost = _cost(config, devices, plan, compiled["programs"]["train"])
    except HarnessError:
        raise
    except Exception:  # the twin without micro-batches needs more memory: no cost model of the whole step
        cost = {"flops": None, "bytes": None, "optimal_seconds": None}
    return {
        "plan": plan.to_dict(),
        "compile_seconds": compiled["seconds"],
        "hbm_per_device": hbm,
        "memory": programs,
        "memory_per_device": max(p["total"] for p in programs.values()),
        "fits": all(p["fits"] for p in programs.values()),
        **timing(cost, kind, config.dtype, config.batch_size, len(devices), per_chip),
    }


class CompileError(HarnessError):
    """A step that XLA's TPU compiler refused (one line of its message)."""


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join((lines or [type(error).__name__])[0].split())[:300]


def hbm_per_device(devices: list) -> float | None:
    """The HBM one of ``devices`` has: its chip's (the peak table's) divided among the chip's devices."""
    memory, _ = peaks.memory_bytes(devices[0].device_kind)
    return memory / (len(devices) // runtime.chip_count(devices)) if memory else None


def timing(cost: dict, kind: str, dtype: str, batch: int, devices: int, per_chip: int) -> dict:
    """The predicted step time (XLA's cost model, else a roofline of FLOPs and bytes against the chip's peaks),
    examples/s per slice and per chip, and MFU against the chip's dense ``dtype`` peak."""
    peak, peak_source = peaks.peak_flops(kind, dtype)
    bandwidth, _ = peaks.peak_bandwidth(kind)
    flops, accessed, optimal = cost["flops"], cost["bytes"], cost["optimal_seconds"]
    if optimal is not None and optimal > 0:
        seconds, source = optimal, "xla_tpu_cost_model"
    else:
        bounds = [a / (p / per_chip) for a, p in ((flops, peak), (accessed, bandwidth)) if a and p]
        seconds, source = (max(bounds), "roofline") if bounds else (None, "none")
    chips = devices // per_chip
    rate = batch / seconds if seconds else None
    mfu = flops * devices / seconds / (peak * chips) if seconds and flops and peak else None
    return {
        "flops_per_device": flops,
        "bytes_per_device": accessed,
        "flops_per_example": flops * devices / batch if flops else None,
        "optimal_seconds": optimal,
        "step_seconds": seconds,
        "prediction": source,
        "examples_per_sec": rate,
        "examples_per_sec_per_chip": rate / chips if rate else None,
        "mfu": mfu,
        "peak_flops_per_chip": peak,
        "peak_source": peak_source,
        "chips": chips,
        "devices": devices,
    }


def fit(
    needs: Callable[[int], int | None],
    limit: float,
    start: int,
    multiple: int,
    max_batch: int,
    precision: float = 1 / 16,
) -> dict[str, Any]:
    """The largest global batch (a multiple of ``multiple``, from ``start`` to ``max_batch``) whose step fits in
    ``limit`` bytes per device by ``needs(batch)`` (bytes per device, None: it did not compile for lack of memory).

    Doubling from ``start`` until the first batch that does not fit (``max_batch`` itself is tried before a
    doubling would pass it), then bisecting between the last that fits and the first that does not until they are
    within ``precision`` of each other. Memory grows about linearly with the batch, so each bisection point is
    the linear interpolation of the two ends' needs to ``limit`` where both are known (kept inside the bracket),
    else the midpoint: a few compilations instead of a dozen. Returns ``{"largest", "first_too_big", "capped",
    "tried"}``; ``largest`` None when ``start`` does not fit, ``capped`` True when ``max_batch`` fits."""
    tried: list[tuple[int, int | None]] = []

    def fits(b: int) -> bool:
        need = needs(b)
        tried.append((b, need))
        return need is not None and need <= limit

    lo, hi = None, start
    while fits(hi):
        lo = hi
        if hi == max_batch:
            return {"largest": lo, "first_too_big": None, "capped": True, "tried": tried}
        hi = min(max(hi * 2, _extrapolated(tried, limit, multiple)), max_batch)
    if lo is None:
        return {"largest": None, "first_too_big": start, "capped": False, "tried": tried}
    interpolate = True
    while hi - lo > max(multiple, lo * precision):
        need = dict(tried) if interpolate else {}  # after an interpolated guess that fit: the midpoint
        mid = _between(lo, hi, need, limit, multiple, max(multiple, lo * precision))
        if fits(mid):
            lo, interpolate = mid, not interpolate
        else:
            hi, interpolate = mid, True
    return {"largest": lo, "first_too_big": hi, "capped": False, "tried": tried}


def _extrapolated(tried: list[tuple[int, int | None]], limit: float, multiple: int) -> int:
    """Where the line through the last two batches' needs reaches ``limit`` (0 when it cannot be drawn): the
    doubling jumps there when that is further than twice the last batch."""
    if len(tried) < 2 or None in (tried[-1][1], tried[-2][1]) or limit == float("inf"):
        return 0
    (b0, n0), (b1, n1) = tried[-2], tried[-1]
    if b1 <= b0 or n1 <= n0:
        return 0
    return int(b1 + (limit - n1) * (b1 - b0) / (n1 - n0)) // multiple * multiple


def _between(lo: int, hi: int, need: dict, limit: float, multiple: int, tolerance: float) -> int:
    """The next batch to try strictly between ``lo`` (fits) and ``hi`` (does not): the interpolation of their
    needs to ``limit`` where both are known, nudged to close the bracket, else the midpoint; a multiple of
    ``multiple``."""
    guess = (lo + hi) / 2
    a, b = need.get(lo), need.get(hi)
    if limit == float("inf"):
        pass
    elif a is not None and b is not None and b > a:
        guess = lo + (limit - a) * (hi - lo) / (b - a)
        guess = min(max(guess - tolerance / 2, lo + tolerance / 2), hi - tolerance / 2)  # just under the line
    elif a is not None and b is None and hi - lo > 2 * tolerance and lo > 0 and limit > a:
        guess = min(lo * limit / a, (lo + hi) / 2)  # proportional growth from lo; never past the midpoint
    if guess - lo < tolerance:  # just above the last fit: test the bracket's upper end at the precision asked
        guess = lo + tolerance
    mid = int(guess) // multiple * multiple
    return min(max(mid, lo + multiple), hi - multiple)
