"""``harness bench [run|sweep|tta|report|check]``: runs benchmarks, appends ledger rows, renders and checks them."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from harness import bench, ledger, paths
from harness.errors import HarnessError

EXIT_NO_BASELINE = 3  # `bench check` found no baseline row to compare with: nothing was checked


def _ints(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise HarnessError(f"--{name}={text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise HarnessError(f"--{name}={text!r}: expected positive integers")
    return values


def _words(text: str, name: str, allowed: tuple[str, ...]) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise HarnessError(f"--{name}={text!r}: allowed: {', '.join(allowed)}")
    return values


def _seeds(text: str) -> list[int]:
    """``--seeds``: comma-separated integers in [0, 2**32), at least one."""
    from harness.config import SEED_LIMIT

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(0 <= v < SEED_LIMIT for v in values):
        raise HarnessError(f"--seeds={text!r}: expected comma-separated integers in [0, 2**32), e.g. 0,1,2")
    return values


def _check_args(args) -> None:
    """Refuses bad arguments in one line before anything is measured."""
    if args.windows < 5:
        raise HarnessError(f"--windows={args.windows}: at least 5 timing windows are needed")
    if not 0 < args.target <= 1:
        raise HarnessError(f"--target={args.target}: the test accuracy to reach must be in (0, 1]")
    if not 0 <= args.tolerance < 1:
        raise HarnessError(f"--tolerance={args.tolerance}: the allowed throughput drop must be in [0, 1) (0.2 = 20 %)")
    _seeds(args.seeds)
    if args.dispatches < 1:
        raise HarnessError(f"--dispatches={args.dispatches}: at least 1 dispatch per timing window")
    for name in ("num_devices", "micro_batches"):
        if getattr(args, name) < 0:
            raise HarnessError(f"--{name.replace('_', '-')}={getattr(args, name)}: must be 0 (auto) or positive")


def _points(args, resolve: bool = True) -> list[bench.Point]:
    """The grid of the arguments; ``resolve``: automatic steps per dispatch as ``harness train`` runs them here
    (off for a grid compiled for other devices, whose plan resolves them there)."""
    from harness.config import ALLOWED
    from harness.models import MODELS

    names = _words(args.models, "models", tuple(MODELS))
    points = list(
        bench.grid(
            names,
            _ints(args.batch_sizes, "batch-sizes"),
            _words(args.dtypes, "dtypes", ALLOWED["dtype"]),
            _words(args.parallel, "parallel", ALLOWED["parallel"]),
            _words(args.data, "data", bench.DATA_MODES),
            _steps_per_dispatch(args.steps_per_dispatch),
            args.num_devices,
            tuple(_words(args.conv, "conv", ALLOWED["conv"])),
            _widths(args.widths, names),
        )
    )
    points = [dataclasses.replace(p, micro_batches=args.micro_batches) for p in points]
    if resolve:
        _check_points(points)
    return [bench.resolve(p) for p in points] if resolve else points


# The flag that sets each config key of a grid point: a point's config error is reported as the flag's.
_FLAGS = {
    "num_devices": "--num-devices",
    "batch_size": "--batch-sizes",
    "micro_batches": "--micro-batches",
    "steps_per_dispatch": "--steps-per-dispatch",
    "width": "--widths",
    "model": "--models",
    "dtype": "--dtypes",
    "parallel": "--parallel",
    "conv": "--conv",
}


def _check_points(points: list[bench.Point]) -> None:
    """Every point's config checked against its devices before anything is measured; an error names the flag the
    user gave (``--num-devices 5``), not the config key it sets."""
    import re

    from harness import plan, runtime
    from harness.errors import ConfigError

    def as_flag(found: re.Match) -> str:
        return f"{_FLAGS[found.group(1)]} " if found.group(1) in _FLAGS else found.group(0)

    for p in points:
        try:
            plan.resolve(bench._config(p), runtime.select_devices(p.num_devices))
        except ConfigError as e:
            raise HarnessError(re.sub(r"config\.(\w+)=", as_flag, str(e))) from None


def _widths(texts: list[str] | None, names: list[str]) -> dict[str, list[int]]:
    """``--widths``: multipliers of every model's widths (``1,4,16``), or of one model's (``mlp=1,8,32``; the flag
    repeats); a model given none runs at width 1."""
    found: dict[str, list[int]] = {}
    for text in texts or ["1"]:
        name, named, values = text.rpartition("=")
        if named and name not in names:
            raise HarnessError(f"--widths={text!r}: {name!r} is not one of --models ({', '.join(names)})")
        try:
            ladder = _ints(values, "widths")
        except HarnessError:
            raise HarnessError(
                f"--widths={text!r}: expected comma-separated positive integers (1,4,16) or MODEL=integers (mlp=1,8,32)"
            ) from None
        for m in [name] if named else names:
            if m in found:
                raise HarnessError(f"--widths={text!r}: {m} already has widths {','.join(map(str, found[m]))}")
            found[m] = ladder
    return {m: found.get(m, [1]) for m in names}


def _steps_per_dispatch(text: str) -> list[int]:
    """``--steps-per-dispatch``: comma-separated positive counts, or ``auto`` (0: what `harness train` runs)."""
    if text.strip() == "auto":
        return [0]
    return _ints(text, "steps-per-dispatch")


def _count(n: float) -> str:
    """``n`` in a few characters: 824k, 3.3M, 1.2G."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def _scale(point: bench.Point, f: dict) -> str:
    """The model's size: width multiplier, parameters, FLOPs per example and the FLOP/s achieved."""
    flops = f.get("flops_per_example")
    work = f"{_count(flops):>5} FLOP/ex {_count(flops * f['examples_per_sec']):>5} FLOP/s" if flops else "FLOPs n/a"
    return f"w{point.width:<3} {_count(f['params']):>5} params  {work:<26}"


def _describe(point: bench.Point, f: dict) -> str:
    mfu = f"{f['mfu']:.1%}" if isinstance(f["mfu"], float) else "n/a"
    of_ceiling = f"{f['ceiling_fraction']:.1%}" if isinstance(f.get("ceiling_fraction"), float) else "n/a"
    return (
        f"{point.model:<8} {_scale(point, f)}  b{point.batch_size:<6} {point.dtype:<8} {point.parallel:<4} "
        f"{point.data:<9} {f['conv_impl'] + '/' + str(f['micro_batches']) if f['plan']['family'] == 'cnn' else '':<8} "
        f"×{point.steps_per_dispatch:<3} {f['examples_per_sec']:>12,.0f} ex/s  "
        f"step {f['step_seconds_median'] * 1e3:8.2f} ms "
        f"(p10 {f['step_seconds_p10'] * 1e3:.2f}, p90 {f['step_seconds_p90'] * 1e3:.2f})  compile "
        f"{f['compile_seconds']:.1f} s  MFU {mfu} ({of_ceiling} of the measured ceiling)"
    )


def _show(point: bench.Point, f: dict, previous_plan: str | None = None) -> str:
    """Prints the row of one point, after its plan line when that differs from ``previous_plan``; returns it."""
    from harness.plan import Plan

    plan = f"plan: {Plan(**f['plan']).describe()}"
    if plan != previous_plan:
        print(plan)
    print(_describe(point, f), flush=True)
    return plan


def _stall_shares(results: list[tuple[bench.Point, dict]]) -> None:
    """Adds ``data_stall_share`` to host-pipeline figures whose device-resident twin was measured too."""
    device = {dataclasses.replace(p, data="device"): f for p, f in results if p.data == "device"}
    for p, f in results:
        twin = device.get(dataclasses.replace(p, data="device"))
        if p.data == "host" and twin:
            f["data_stall_share"] = max(0.0, 1 - f["examples_per_sec"] / twin["examples_per_sec"])


def _trace_dir(point: bench.Point, root: str) -> Path:
    """``--trace ROOT``'s folder for one point, named after it."""
    p = point
    name = f"{p.model}-w{p.width}-b{p.batch_size}-{p.dtype}-{p.parallel}-{p.data}-x{p.steps_per_dispatch}-{p.conv}"
    return Path(root).expanduser() / name


def _measured(point: bench.Point, args) -> dict:
    """``bench.measure`` of ``point``; with ``--trace``, inside a profiler trace whose top operations are printed
    (the trace holds the whole measurement: compilation is host work, the operations are the timed steps')."""
    if not args.trace:
        return bench.measure(point, windows=args.windows, dispatches_per_window=args.dispatches)
    from harness import ceiling, profiling

    ceiling.measured()  # calibrated (once per process) before the trace: its matmuls are not the step's operations
    directory = _trace_dir(point, args.trace)
    with profiling.trace(directory):
        figures = bench.measure(point, windows=args.windows, dispatches_per_window=args.dispatches)
    for line in profiling.summary_lines(directory, n=5):
        print(line)
    return {**figures, "trace": str(directory)}


def _measure_grid(args) -> list[dict]:
    results, plan, points = [], None, _points(args)
    progress = _Progress(len(points))
    for point in points:
        progress(bench.label(point))
        figures = _measured(point, args)
        plan = _show(point, figures, plan)
        results.append((point, figures))
    _stall_shares(results)
    return [ledger.make_row("throughput", dataclasses.asdict(p), f) for p, f in results]


def _sweep_rows(point: bench.Point, args) -> list[dict]:
    """One batch sweep's rows: every size measured, the size that ran out of memory (an ``out_of_memory`` row
    saying so, where one did), and the best size."""
    progress = _Progress()
    tried = bench.sweep(
        point,
        windows=args.windows,
        dispatches_per_window=args.dispatches,
        before=lambda p: progress(bench.label(p)),
    )
    shown = {"plan": None}

    def show(p: bench.Point, f: dict) -> None:
        shown["plan"] = _show(p, f, shown["plan"])

    rows = ledger.tried_rows(tried, show)
    measured = [t for t in tried if t["figures"]]
    if not measured:
        print(f"no batch size from {point.batch_size} fit in memory")
        return rows
    best = max(measured, key=lambda t: t["figures"]["examples_per_sec"])
    print(f"best: batch {best['point'].batch_size} ({best['figures']['examples_per_sec']:,.0f} ex/s)")
    return [*rows, ledger.make_row("sweep_best", dataclasses.asdict(best["point"]), best["figures"])]


def _peer_answers(module, calls: list[dict]):
    """(call, figures) per answered call of :func:`harness.peers.run`, saying what it skipped or what failed."""
    from harness import peers

    try:
        answers = peers.run(module, calls)
        first = next(answers)
        if not first["available"]:
            print(f"peer {module.NAME}: skipped ({first['why']})")
            return
        for call, answer in zip(calls, answers, strict=False):
            if "error" in answer:
                print(f"peer {module.NAME}: failed at {call['kwargs']} ({answer['error']})")
            elif answer["figures"] is not None:
                yield call, answer["figures"]
            else:
                print(f"peer {module.NAME}: skipped (no {call['fn'].replace('_', '-')} run)")
    except peers.PeerFailed as e:
        print(f"peer {module.NAME}: failed ({e}); its other points are not measured")


def _credited(figures: dict, ours: dict | None) -> dict:
    """A peer's figures with the FLOP figures of the same model at the same batch, by harness's count (XLA's cost
    analysis of harness's step: model FLOPs utilisation counts the model's FLOPs, whichever framework runs them);
    as they are where harness did not measure that point."""
    if not ours or not isinstance(ours.get("flops_per_example"), float):
        return figures
    speed = figures["examples_per_sec"] / ours["examples_per_sec"]
    scaled = {k: ours[k] * speed for k in ("achieved_flops_per_sec", "mfu", "ceiling_fraction") if _real(ours.get(k))}
    return {**figures, "flops_per_example": ours["flops_per_example"], **scaled}


def _real(value) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def _peer_rows(args, ours: list[dict] = ()) -> list[dict]:
    """Each peer, in a process of its own, at the same models, widths and batch sizes as harness's rows (``ours``:
    whose FLOP counts the peers' rows are credited with, :func:`_credited`)."""
    from harness import peers

    counted = {
        (r["point"]["model"], r["point"]["width"], r["point"]["batch_size"]): r["figures"]
        for r in ours
        if r["kind"] == "throughput" and r["point"]["dtype"] == "float32"
    }

    names = args.models.split(",")
    kw = {"windows": args.windows, "dispatches_per_window": args.dispatches}
    calls = [
        peers.measure_call(m, bs, w, **kw)
        for m, ws in _widths(args.widths, names).items()
        for w in ws
        for bs in _ints(args.batch_sizes, "batch-sizes")
    ]
    rows = []
    for module in peers.modules():
        for call, figures in _peer_answers(module, calls):
            model, width, bs = (call["kwargs"][k] for k in ("model", "width", "batch_size"))
            figures = _credited(figures, counted.get((model, width, bs)))
            mfu = f"  MFU {figures['mfu']:.1%}" if _real(figures.get("mfu")) else ""
            speed = f"{figures['examples_per_sec']:>12,.0f} ex/s{mfu}"
            print(f"peer {module.NAME:<18} {model:<6} w{width:<3} b{bs:<6} {speed}", flush=True)
            point = {"model": model, "width": width, "batch_size": bs, "dtype": "float32", "peer": module.NAME}
            rows.append(ledger.make_row("throughput", point, figures, framework=module.NAME))
    return rows


def _tta_row(args, overrides: list[str]) -> dict | None:
    """``bench tta``'s row, its seeds' lines printed (None when a stop came before any seed finished)."""
    seeds = _seeds(args.seeds)
    figures = bench.time_to_accuracy(args.config, args.target, seeds, overrides, print_fn=_say)
    for r in figures["runs"]:
        reached = f"reached in {r['seconds']:.1f} s (epoch {r['epochs']})" if r["epochs"] else "did not reach"
        print(f"seed {r['seed']}: {reached}; final test_accuracy {r['accuracy']:.4f}")
    if figures["runs"]:
        median = figures["median_seconds"]
        print(
            f"time to {args.target}: median {median:.1f} s over {figures['reached']}/{figures['seeds']} seeds"
            if not math.isnan(median)
            else f"no seed reached {args.target}"
        )
    if "stopped" in figures:
        kept = "; no seed finished: nothing recorded" if not figures["runs"] else ": the finished seeds are kept"
        print(f"stopped by {figures['stopped']}{kept}")
    if not figures["runs"]:
        return None
    point = {"config": args.config, "target": args.target, "overrides": overrides}
    return ledger.make_row("time_to_accuracy", point, figures)


def _say(line: str) -> None:
    """A progress line of a long command, shown at once."""
    print(line, flush=True)


class _Progress:
    """A line before each unit of a long command's work: which one (of how many, when known) and the seconds
    since the command's work began."""

    def __init__(self, total: int | None = None, clock: Callable[[], float] = time.perf_counter):
        self.total, self.done, self.clock, self.started = total, 0, clock, clock()

    def __call__(self, what: str) -> None:
        self.done += 1
        of = f"/{self.total}" if self.total else ""
        _say(f"[{self.done}{of}] measuring {what}  ({self.clock() - self.started:.0f} s so far)")


def _median_text(figures: dict) -> str:
    if math.isnan(figures["median_seconds"]):
        return f"not reached by any of {figures['seeds']} seeds"
    return f"median {figures['median_seconds']:.1f} s over {figures['reached']}/{figures['seeds']} seeds"


def _peer_tta_rows(args, overrides: list[str]) -> list[dict]:
    """The peers' time to ``--target`` training the recipe of the config being timed, overrides included
    (:func:`harness.peers.recipe`), with what each could not copy of it; a config they cannot train is skipped."""
    from harness import config as config_lib
    from harness import peers

    try:
        copied = peers.recipe(config_lib.load(args.config, overrides))
    except peers.CannotFollow as e:
        print(f"peers: skipped (they cannot train {args.config}: {e})")
        return []
    calls = [peers.tta_call(copied, args.target, _seeds(args.seeds))]
    rows = []
    for module in peers.modules():
        for _, figures in _peer_answers(module, calls):
            print(f"peer {module.NAME}: time to {args.target}: {_median_text(figures)}")
            for difference in figures.get("differences", []):
                print(f"  differs from harness: {difference}")
            point = {"config": args.config, "target": args.target, "overrides": list(overrides), "peer": module.NAME}
            rows.append(ledger.make_row("time_to_accuracy", point, figures, framework=module.NAME))
    return rows


def _suite_rows(args) -> list[dict]:
    """``bench suite``: the standard benchmark of this machine (:mod:`harness.suite`) within ``--budget`` seconds."""
    import jax

    from harness import suite
    from harness.config import ALLOWED

    if not args.budget > 0:
        raise HarnessError(f"--budget={args.budget}: seconds to spend, > 0")
    devices = jax.local_devices()
    shown = {"plan": None}

    def show(point: bench.Point, figures: dict) -> None:
        shown["plan"] = _show(point, figures, shown["plan"])

    print(f"suite: {len(devices)} {devices[0].device_kind} device(s), budget {args.budget:.0f} s")
    return suite.run(
        devices[0].platform,
        len(devices),
        ALLOWED["parallel"],
        quick=args.quick,
        budget_seconds=args.budget,
        show=show,
        print_fn=_say,
    )


def _accuracy_row(args, overrides: list[str]) -> dict:
    """``bench accuracy``: the test accuracy the finished runs of ``--config`` reached, one run per seed."""
    from harness import accuracy

    if not args.workdirs:
        raise HarnessError("bench accuracy: name the finished runs of --config with --workdirs W1 W2 …")
    figures = accuracy.figures(args.config, args.workdirs, overrides)
    for r in figures["runs"]:
        done = f"after {r['epochs']} epochs, {r['train_seconds']:.0f} s of training"
        print(f"seed {r['seed']}: test_accuracy {r['accuracy']:.4f} {done}")
    print(f"{args.config}: median test accuracy {figures['median_accuracy']:.4f} over seeds {figures['seeds']}")
    return ledger.make_row("accuracy", {"config": args.config, "overrides": list(overrides)}, figures)


def _save(rows: list[dict], args) -> None:
    if args.no_ledger:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return
    for path in ledger.append(rows, ledger_dir(args)):
        print(f"ledger: appended to {path}")


def ledger_dir(args) -> Path:
    """``--ledger``, else ``benchmarks/results`` of the enclosing checkout or of the current directory."""
    return Path(args.ledger).expanduser() if args.ledger else paths.default_ledger_dir()


def _check_ledger_dir(directory: Path, writing: bool) -> None:
    """Refuses a ledger path that is not a directory, or one that cannot be written, before anything is measured."""
    if directory.exists() and not directory.is_dir():
        raise HarnessError(f"--ledger {directory}: exists and is not a directory")
    existing = next(d for d in (directory, *directory.parents) if d.exists())
    if not existing.is_dir():
        raise HarnessError(f"--ledger {directory}: {existing} is not a directory")
    if writing and not os.access(existing, os.W_OK):
        raise HarnessError(f"--ledger {directory}: {existing} is not writable")


def run(args, overrides: list[str]) -> int:
    """Dispatches ``harness bench ACTION``."""
    ledger.git_commit()  # the code this run starts with names its rows, however long it runs
    directory = ledger_dir(args)
    _check_args(args)
    writing = args.action in ("run", "sweep", "tta", "suite", "accuracy", "compile") and not args.no_ledger
    _check_ledger_dir(directory, writing=writing)
    if args.action == "run":
        rows = _measure_grid(args)
        rows += _peer_rows(args, rows) if args.peers else []
        _save(rows, args)
    elif args.action == "sweep":
        _save([row for point in _points(args) for row in _sweep_rows(point, args)], args)
    elif args.action == "accuracy":
        _save([_accuracy_row(args, overrides)], args)
    elif args.action == "compile":
        from harness import compile_cli

        compile_cli.bench_rows(args, save=lambda rows: _save(rows, args))
    elif args.action == "suite":
        _save(_suite_rows(args), args)
    elif args.action == "tta":
        from harness.preemption import stop_requested

        rows = [row for row in [_tta_row(args, overrides)] if row]
        _save(rows + (_peer_tta_rows(args, overrides) if args.peers and not stop_requested() else []), args)
    elif args.action == "report":
        rows, readme = ledger.read(directory), _readme(args)
        if not rows:
            raise HarnessError(f"{directory}: no ledger rows (run `harness bench` first)")
        if readme is not None and not any(r["kind"] == "predicted" for r in rows):
            raise HarnessError(f"--readme {readme}: the ledger holds no predicted rows (run `harness bench compile`)")
        out = Path(args.out) if args.out else (Path(args.ledger) if args.ledger else paths.default_bench_dir())
        out.mkdir(parents=True, exist_ok=True)
        (out / "LEADERBOARD.md").write_text("# Benchmark leaderboard\n\n" + ledger.leaderboard(rows))
        for path in [out / "LEADERBOARD.md", *ledger.plots(rows, out)]:
            print(f"wrote {path}")
        _render_readme(readme, rows)
    else:
        return _check(args, overrides, directory)
    return 0


def _readme(args) -> Path | None:
    """``bench report --readme FILE``, checked before anything is written: a file with the predicted-TPU markers."""
    if not args.readme:
        return None
    from harness import predicted

    path = Path(args.readme).expanduser()
    if not path.is_file():
        raise HarnessError(f"--readme {path}: no such file")
    text = path.read_text(encoding="utf-8", errors="replace")
    if predicted.README_BEGIN not in text or predicted.README_END not in text:
        raise HarnessError(f"--readme {path}: no {predicted.README_BEGIN!r} … {predicted.README_END!r} markers")
    return path


def _render_readme(path: Path | None, rows: list[dict]) -> None:
    """The predicted-TPU table between the README's markers (``--readme``)."""
    if path is None:
        return
    from harness import predicted

    if not any(r["kind"] == predicted.PREDICTED for r in rows):
        raise HarnessError(f"--readme {path}: the ledger holds no predicted rows (run `harness bench compile` first)")
    if not predicted.update_readme(path, rows):
        raise HarnessError(f"--readme {path}: its markers are not in order ({predicted.README_BEGIN!r} first)")
    print(f"wrote the predicted-TPU table into {path}")


def _check(args, overrides: list[str], directory: Path) -> int:
    """``bench check``: 1 on a regression, ``EXIT_NO_BASELINE`` when nothing had a baseline to compare with."""
    baseline = ledger.read(directory)
    if not baseline and not args.tta:  # nothing can match: say so without measuring
        print(f"no baseline: nothing checked ({directory} holds no ledger rows)")
        return EXIT_NO_BASELINE
    fresh = _measure_grid(args) + [row for row in [_tta_row(args, overrides) if args.tta else None] if row]
    problems, matched = ledger.compare(fresh, baseline, args.tolerance)
    for p in problems:
        print(f"REGRESSION: {p}")
    if problems:
        print(f"checked {len(fresh)} point(s), {matched} with a baseline: FAILED")
        return 1
    if not matched and not args.tta:
        print(f"no baseline: nothing checked (no rows of this machine for these points in {directory})")
        return EXIT_NO_BASELINE
    if not matched:
        print(f"no throughput baseline of this machine for these points in {directory}: only --tta was checked")
    print(f"checked {len(fresh)} point(s), {matched} with a baseline: ok")
    return 0
