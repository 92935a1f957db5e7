"""``harness compile`` and ``harness bench compile``: a run compiled for a described TPU slice, one line per point.

``harness compile --topology v5e-8 --config NAME [--fit] [--config.KEY=V …]`` compiles one config's run; ``harness
bench compile --topologies v2-8,v5e-8 --models mlp,cnn --widths 1,4,16 --dtypes float32,bfloat16 [--fit]`` a
grid of them into the ledger as ``predicted`` rows (:mod:`harness.aot`: the compiler's predictions, never
measurements).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable

import ml_collections

from harness import aot, bench, ledger, topology
from harness.errors import HarnessError
from harness.plan import Plan


def _size(n: float | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _count(n: float | None, unit: str) -> str:
    if n is None:
        return f"n/a {unit}"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.1f} {prefix}{unit}"
    return f"{n:.0f} {unit}"


SOURCES = {"xla_tpu_cost_model": "XLA's TPU cost model", "roofline": "roofline of FLOPs and bytes", "none": "none"}


def describe(label: str, f: dict) -> str:
    """One line: compiled, memory per device against its HBM, FLOPs and bytes, the predicted step and MFU."""
    train = f["memory"]["train"]
    others = ", ".join(f"{name} {_size(m['total'])}" for name, m in f["memory"].items() if name != "train")
    fits = "fits" if f["fits"] else "DOES NOT FIT"
    memory = (
        f"memory/device {_size(f['memory_per_device'])} of {_size(f['hbm_per_device'])} HBM, {fits} (train: "
        f"arguments {_size(train['arguments'])}, temporaries {_size(train['temporaries'])}, outputs "
        f"{_size(train['outputs'])}, code {_size(train['code'])}; {others})"
    )
    work = f"{_count(f['flops_per_device'], 'FLOP')}, {_count(f['bytes_per_device'], 'B')} per device per step"
    if f["step_seconds"]:
        mfu = f"MFU {f['mfu']:.1%}" if f["mfu"] is not None else "MFU n/a"
        speed = (
            f"predicted {f['step_seconds'] * 1e3:.3f} ms/step ({SOURCES[f['prediction']]}): "
            f"{f['examples_per_sec']:,.0f} ex/s, {f['examples_per_sec_per_chip']:,.0f} per chip, {mfu}"
        )
    else:
        speed = "no step-time prediction"
    return f"{label}: compiled in {f['compile_seconds']:.1f} s · {memory} · {work} · {speed}"


def predicted_fingerprint(tpu: topology.Slice, devices: int) -> dict:
    """A predicted row's fingerprint: the slice (accelerator, topology, chips, hosts, libtpu) and the versions
    and host that compiled it; no measured ceiling (nothing ran)."""
    import os

    import jaxlib

    from harness import checkpoint, peaks

    here = checkpoint.fingerprint()
    return {
        **{k: here[k] for k in ("harness", "jax", "flax", "optax", "orbax", "python")},
        "jaxlib": jaxlib.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "platform": "tpu",
        "device_kind": tpu.device_kind,
        "device_count": devices,
        "process_count": tpu.hosts,
        "compiled_on": peaks.cpu_info().name,
        **tpu.fingerprint(),
    }


def _fit_line(result: dict, what: str) -> str:
    if result["largest"] is None:
        return f"{what}: no batch from {result['first_too_big']} fits"
    if result["capped"]:
        return f"{what}: largest batch that fits ≥ {result['largest']:,} (the most searched)"
    return (
        f"{what}: largest batch that fits {result['largest']:,} ({result['first_too_big']:,} does not; "
        f"{len(result['tried'])} compilations)"
    )


def search(
    config: ml_collections.ConfigDict,
    tpu: topology.Slice,
    max_batch: int,
    show: Callable[[int, dict | str], None],
    known: dict[int, dict] | None = None,
) -> tuple[dict, dict[int, dict]]:
    """:func:`harness.aot.fit` of ``config`` on ``tpu`` from its batch size; (the search's result, the figures of
    each batch that compiled). ``show(batch, figures or the error)`` is told every attempt; ``known``: figures of
    batches already compiled (not compiled again)."""
    compiled: dict[int, dict] = {}
    devices, _ = aot.resolve(config, tpu)

    def needs(batch: int) -> int | None:
        c = config.copy_and_resolve_references()
        c.batch_size = batch
        try:
            figures = (known or {}).get(batch) or aot.predict(c, tpu)
        except aot.CompileError as e:
            if "RESOURCE_EXHAUSTED" not in str(e) and "memory" not in str(e).lower():
                raise aot.CompileError(f"batch {batch}: {e}") from None
            show(batch, str(e))
            return None
        compiled[batch] = figures
        show(batch, figures)
        return figures["memory_per_device"]

    multiple = len(devices) * max(1, config.micro_batches)
    asked = max_batch or aot.split_sizes(config)[0]  # 0: the training split, the most `harness train` takes
    max_batch = asked // multiple * multiple
    if max_batch < config.batch_size:
        raise HarnessError(
            f"--max-batch {asked}: below the batch the search starts from ({config.batch_size}, a multiple of "
            f"{multiple} on {tpu.name}); give a larger --max-batch or a smaller batch"
        )
    result = aot.fit(needs, aot.hbm_per_device(devices) or float("inf"), config.batch_size, multiple, max_batch)
    return result, compiled


def compile_command(args, overrides: list[str]) -> int:
    """``harness compile``: one config's run compiled for one slice (and, with ``--fit``, its largest batch)."""
    from harness import config as config_lib

    if args.max_batch < 0:
        raise HarnessError(f"--max-batch={args.max_batch}: a global batch size (0: the training split's size)")
    tpu = topology.describe(args.topology)
    config = config_lib.load(args.config, overrides)
    _, plan = aot.resolve(config, tpu)
    if not args.json:
        print(f"{tpu.describe()}; libtpu {topology.libtpu_version()}")
        print(f"plan: {Plan(**plan.to_dict()).describe()}")
    label = f"{args.config} batch {config.batch_size}"
    try:
        figures = aot.predict(config, tpu)
    except aot.CompileError as e:
        raise HarnessError(f"{tpu.name} {label}: did not compile ({e})") from None
    out = {"slice": tpu.fingerprint(), "figures": figures}
    if not args.json:
        print(describe(label, figures))
    if args.fit:

        def show(batch: int, f: dict | str) -> None:
            if not args.json:
                print(f"  batch {batch:,}: " + (f"does not fit ({f})" if isinstance(f, str) else _brief(f)))

        result, _ = search(config, tpu, args.max_batch, show, known={config.batch_size: figures})
        out["fit"] = {k: result[k] for k in ("largest", "first_too_big", "capped")}
        if not args.json:
            print(_fit_line(result, f"{tpu.name} {args.config}"))
    if args.json:
        print(json.dumps(out, sort_keys=True))
    return 0


def _brief(f: dict) -> str:
    fits = "fits" if f["fits"] else "does not fit"
    speed = f", predicted {f['examples_per_sec']:,.0f} ex/s" if f.get("examples_per_sec") else ""
    return f"{_size(f['memory_per_device'])} of {_size(f['hbm_per_device'])} per device, {fits}{speed}"


# ---------------------------------------------------------------------------------------------- the bench grid


def _point_dict(point: bench.Point, tpu: topology.Slice) -> dict:
    p = dataclasses.asdict(point)
    return {**p, "data": "device", "accelerator": tpu.name, "topology": tpu.topology}


def _grid_config(point: bench.Point, tpu: topology.Slice) -> ml_collections.ConfigDict:
    """A grid point's config as ``harness train`` would run it on ``tpu`` (its steps per dispatch too)."""
    config = bench._config(point)
    config.steps_per_dispatch = point.steps_per_dispatch
    return _start(config, tpu)


def _series(args) -> list[tuple[topology.Slice, bench.Point]]:
    """Every (slice, point) of the grid, each point on every slice before the next (the widest models come last);
    every point checked on every slice before anything compiles (a bad one is one line naming it)."""
    from harness.bench_cli import _points

    text = topology.DEFAULT_SLICES if args.topologies is None else args.topologies
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise HarnessError(f"--topologies={text!r}: name at least one TPU slice, e.g. v5e-8")
    if args.data.strip() != "device":
        raise HarnessError(f"--data={args.data}: bench compile compiles training's device-resident data (device)")
    slices = [topology.describe(n) for n in names]
    series = [(tpu, point) for point in _points(args, resolve=False) for tpu in slices]
    for tpu, point in series:
        try:
            aot.resolve(_grid_config(point, tpu), tpu)
        except HarnessError as e:
            raise HarnessError(f"{tpu.name} {point.model} w{point.width} b{point.batch_size}: {e}") from None
    return series


def _start(config: ml_collections.ConfigDict, tpu: topology.Slice) -> ml_collections.ConfigDict:
    """A grid point's config on ``tpu``: its batch rounded up to a multiple of the slice's devices (batch 128 on
    the 256 chips of a v5e-256 starts at 256)."""
    n = config.num_devices or len(tpu.devices)
    config.batch_size = -(-config.batch_size // n) * n
    return config


def bench_rows(args, save: Callable[[list[dict]], None] = lambda rows: None) -> list[dict]:
    """``harness bench compile``: every point of the grid compiled for every slice of ``--topologies``; with
    ``--fit`` each point's batch is the start of a search for the largest that fits (a row per batch compiled,
    the series' result in the row of the largest). Each point's rows go to ``save`` as soon as they are made (a
    grid stopped half-way keeps what it compiled); returns them all."""
    if args.max_batch < 0:
        raise HarnessError(f"--max-batch={args.max_batch}: a global batch size (0: the training split's size)")
    rows, started = [], time.perf_counter()
    plan_line = None
    for tpu, point in _series(args):
        config = _grid_config(point, tpu)
        devices, plan = aot.resolve(config, tpu)
        if config.batch_size != point.batch_size:
            start = f"batch {point.batch_size} is not a multiple of its {len(devices)} devices"
            print(f"{tpu.name}: {start}; starting at {config.batch_size}")
        fp = predicted_fingerprint(tpu, len(devices))
        label = f"{tpu.name:<8} {point.model:<4} w{point.width:<3} {point.dtype:<8} {point.parallel:<9}"
        if f"plan: {tpu.name}: {plan.describe()}" != plan_line:
            plan_line = f"plan: {tpu.name}: {plan.describe()}"
            print(plan_line)

        refused: dict[int, str] = {}

        def show(batch: int, f: dict | str, label: str = label, refused: dict = refused) -> None:
            if isinstance(f, str):
                refused[batch] = f
            text = f"does not fit ({f})" if isinstance(f, str) else describe(f"b{batch}", f)
            print(f"{label} {text}", flush=True)

        try:
            if args.fit:
                result, compiled = search(config, tpu, args.max_batch, show)
            else:
                compiled, result = {config.batch_size: aot.predict(config, tpu)}, None
                show(config.batch_size, compiled[config.batch_size])
        except aot.CompileError as e:  # refused for another reason than memory: one line, the grid goes on
            print(f"{label} b{config.batch_size}: did not compile ({e})", flush=True)
            continue
        if result is not None:
            print(_fit_line(result, label.strip()), flush=True)
            if result["largest"] is None:  # not even the first batch fits: a row says so
                error = refused.get(config.batch_size, "needs more than the HBM")
                first = compiled.get(config.batch_size, {})  # compiled but too big: its figures stay
                compiled = {config.batch_size: {**first, "fits": False, "error": error}}
                result = {**result, "largest": config.batch_size}  # the row that carries the search's result
        made = []
        for batch, figures in sorted(compiled.items()):
            extra = {}
            if result is not None and batch == result["largest"]:
                extra["fit"] = {k: result[k] for k in ("largest", "first_too_big", "capped")}
                extra["fit"]["largest"] = None if figures["fits"] is False else result["largest"]
                extra["fit"]["tried"] = [b for b, _ in result["tried"]]
            p = {**_point_dict(point, tpu), "batch_size": batch}
            made.append(ledger.make_row("predicted", p, {**figures, **extra}, fp=fp))
        save(made)
        rows += made
    print(f"compiled the grid in {time.perf_counter() - started:.0f} s")
    return rows
