"""The benchmark ledger: one JSON line per measured point, a file per accelerator kind in the ledger directory
(``--ledger``, by default ``benchmarks/results`` of the checkout or of the current directory: :mod:`harness.paths`),
a Markdown leaderboard with plots (throughput, step-time spread, roofline), and a regression check against the
stored baseline of the same machine. Rows written before a field existed read as "n/a" where it is missing."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from harness import ceiling, checkpoint, paths, peaks, roofline

SCHEMA_VERSION = 1
REQUIRED = {"schema": int, "kind": str, "timestamp": str, "fingerprint": dict, "point": dict, "figures": dict}
KINDS = ("throughput", "sweep_best", "time_to_accuracy", "out_of_memory", "accuracy", "predicted")
TIMED_KINDS = ("throughput", "sweep_best")
PREDICTED = "predicted"  # a step compiled for a described TPU slice (harness.aot): the compiler's figures, not timed


def fingerprint() -> dict:
    """What made a row: the checkpoint fingerprint (platform, device kind and count, process count, versions)
    plus jaxlib, the XLA flags, the measured ceiling (:mod:`harness.ceiling`, once per process) and, on a CPU, its
    model, vendor, family and model number, microarchitecture, cores, clock and features."""
    import jaxlib

    fp = {**checkpoint.fingerprint(), "jaxlib": jaxlib.__version__, "xla_flags": os.environ.get("XLA_FLAGS", "")}
    if fp["platform"] == "cpu":
        info = peaks.cpu_info()
        core = peaks.cpu_core(info)
        fp.update(
            cpu_model=info.name,
            cpu_vendor=info.vendor,
            cpu_family=info.family,
            cpu_model_number=info.model,
            cpu_microarchitecture=core.name if core else None,
            cpu_cores=info.cores,
            cpu_mhz=info.mhz,
            cpu_features=list(info.flags),
        )
    fp["ceiling"] = ceiling.measured()
    return fp


def machine_key(fp: dict) -> tuple:
    """Rows are comparable when this matches: same platform, device kind and count, same CPU where it is one."""
    return fp["platform"], fp["device_kind"], fp["device_count"], fp.get("cpu_model"), fp.get("cpu_cores")


@functools.cache
def git_commit() -> str | None:
    """HEAD of the checkout harness runs from, with ``+dirty`` when it has uncommitted changes; None for an
    installed wheel (or outside git). Read once per process (``harness bench`` reads it when it starts), so a long
    run's rows name the code it started with, not commits made while it ran."""
    root = paths.PACKAGE_ROOT.parent
    if not paths.is_checkout(root):
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            # the ledger's own rows appended by this run do not make the code dirty
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def make_row(kind: str, point: dict, figures: dict, fp: dict | None = None, framework: str = "jax") -> dict:
    """A ledger row (validated)."""
    row = {
        "schema": SCHEMA_VERSION,
        "kind": kind,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "framework": framework,
        "fingerprint": fp or fingerprint(),
        "point": point,
        "figures": figures,
    }
    problems = validate(row)
    if problems:
        raise ValueError(f"invalid ledger row: {problems[0]}")
    return row


def tried_rows(
    tried: list[dict], show: Callable, print_fn: Callable[[str], None] = print, extra: dict | None = None
) -> list[dict]:
    """The rows of the sizes a batch sweep tried (:func:`harness.bench.sweep`; one measured point is a sweep of one):
    a throughput row per measured size, which ``show(point, figures)`` prints, and an ``out_of_memory`` row for the
    size that ran out, said with ``print_fn``. ``extra`` goes into every row's figures."""
    rows, extra = [], extra or {}
    for t in tried:
        point = dataclasses.asdict(t["point"])
        if t["figures"] is None:
            print_fn(f"batch {t['point'].batch_size}: out of memory, the sweep stops here ({t['error']})")
            rows.append(make_row("out_of_memory", point, {"stopped": t["stopped"], "error": t["error"], **extra}))
            continue
        show(t["point"], t["figures"])
        rows.append(make_row("throughput", point, {**t["figures"], **extra}))
    return rows


def validate(row: dict) -> list[str]:
    """What is wrong with ``row`` against the schema (empty when it is valid)."""
    problems = [f"{k}: missing or not {t.__name__}" for k, t in REQUIRED.items() if not isinstance(row.get(k), t)]
    if problems:
        return problems
    if row["schema"] != SCHEMA_VERSION:
        problems.append(f"schema {row['schema']} (this harness reads {SCHEMA_VERSION})")
    if row["kind"] not in KINDS:
        problems.append(f"kind {row['kind']!r} not in {KINDS}")
    for key in ("platform", "device_kind", "device_count", "process_count", "jax", "flax", "optax", "xla_flags"):
        if key not in row["fingerprint"]:
            problems.append(f"fingerprint.{key} missing")
    if row["kind"] == "out_of_memory" and not isinstance(row["figures"].get("stopped"), str):
        problems.append("figures.stopped missing")
    if row["kind"] == PREDICTED and not isinstance(row["figures"].get("fits"), bool):
        problems.append("figures.fits missing")
    if row["kind"] in TIMED_KINDS:
        for key in ("examples_per_sec", "step_seconds_median", "step_seconds_p10", "step_seconds_p90"):
            if not isinstance(row["figures"].get(key), int | float):
                problems.append(f"figures.{key} missing")
    return problems


def ledger_path(device_kind: str, directory: Path) -> Path:
    """``DIRECTORY/<device kind>.jsonl`` (the directory: ``--ledger``, see :func:`paths.default_ledger_dir`)."""
    return Path(directory) / (re.sub(r"[^a-z0-9]+", "-", device_kind.lower()).strip("-") + ".jsonl")


def append(rows: list[dict], directory: Path) -> list[Path]:
    """Appends rows to the ledger file of their device kind."""
    written = []
    for row in rows:  # predicted rows in a file of their own: never mixed with measured ones
        suffix = " predicted" if row["kind"] == PREDICTED else ""
        path = ledger_path(row["fingerprint"]["device_kind"] + suffix, directory)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        written.append(path)
    return sorted(set(written))


def read(directory: Path) -> list[dict]:
    """Every valid row of every ledger file in ``directory``."""
    rows = []
    for path in sorted(Path(directory).glob("*.jsonl")):
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            try:
                row = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                row = None
                print(f"warning: {path}, line {number}: not JSON, skipped", file=sys.stderr)
            if isinstance(row, dict) and not validate(row):
                rows.append(row)
    return rows


def _label(row: dict) -> str:
    p = row["point"]
    parts = [p.get(k) for k in ("model", "dtype", "parallel", "data")]
    width = f" w{p['width']}" if p.get("width", 1) != 1 else ""
    return " ".join(str(v) for v in parts if v is not None) + f"{width} ×{p.get('steps_per_dispatch', 1)}"


def _device_name(fp: dict) -> str:
    name = f"{fp['device_kind']} × {fp['device_count']}"
    return f"{name} ({fp['cpu_model']}, {fp['cpu_cores']} cores)" if fp.get("cpu_model") else name


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def _percent(value) -> str:
    """A fraction as a percentage; "n/a" for anything else (unknown peak, older rows without the field)."""
    return f"{value:.1%}" if isinstance(value, float) else "n/a"


def _memory(f: dict) -> str:
    """The device's peak memory in use where it reports it, else the host's peak RSS, in GiB."""
    if isinstance(f.get("peak_bytes_in_use"), int | float) and f["peak_bytes_in_use"]:
        return f"{f['peak_bytes_in_use'] / 2**30:.2f} GiB"
    if isinstance(f.get("host_peak_rss_bytes"), int | float):
        return f"{f['host_peak_rss_bytes'] / 2**30:.2f} GiB (host RSS)"
    return "n/a"


def _intensity(f: dict) -> str:
    value = f.get("arithmetic_intensity")
    return f"{value:.1f}" if isinstance(value, int | float) else "n/a"


def _commit(row: dict) -> str:
    return (row.get("git_commit") or "?")[:9]


def _best(rows: list[dict]) -> dict:
    """Per device, framework, model and width: the timed row with the most examples/s."""
    best: dict = {}
    for row in rows:
        if row["kind"] not in TIMED_KINDS:
            continue
        p = row["point"]
        key = (_device_name(row["fingerprint"]), row.get("framework", "jax"), p.get("model"), p.get("width", 1))
        if key not in best or row["figures"]["examples_per_sec"] > best[key]["figures"]["examples_per_sec"]:
            best[key] = row
    return best


def _throughput_table(rows: list[dict]) -> list[str]:
    lines = [
        "| device | framework | model | width | best examples/s | per device | batch | dtype | parallel | data | "
        "steps/dispatch | step ms (p10–p90) | MFU | of ceiling | FLOP/byte | peak memory | commit |",
        "|" + "---|" * 17,
    ]
    for (device, framework, model, width), row in sorted(_best(rows).items(), key=lambda kv: str(kv[0])):
        p, f = row["point"], row["figures"]
        lines.append(
            f"| {device} | {framework} | {model} | {width} | {f['examples_per_sec']:,.0f} | "
            f"{f.get('examples_per_sec_per_device', f['examples_per_sec']):,.0f} | {p.get('batch_size')} | "
            f"{p.get('dtype')} | {p.get('parallel', '—')} | {p.get('data', '—')} | {p.get('steps_per_dispatch', 1)} | "
            f"{_ms(f['step_seconds_median'])} ({_ms(f['step_seconds_p10'])}–{_ms(f['step_seconds_p90'])}) | "
            f"{_percent(f.get('mfu'))} | {_percent(f.get('ceiling_fraction'))} | {_intensity(f)} | {_memory(f)} | "
            f"{_commit(row)} |"
        )
    return lines


def _tta_table(rows: list[dict]) -> list[str]:
    lines = [
        "| device | framework | config | target | median seconds | spread | seeds reached | commit |",
        "|" + "---|" * 8,
    ]
    for row in rows:
        f = row["figures"]
        lines.append(
            f"| {_device_name(row['fingerprint'])} | {row.get('framework', 'jax')} | {row['point']['config']} | "
            f"{row['point']['target']} | "
            f"{f['median_seconds']:.1f} | {f['min_seconds']:.1f}–{f['max_seconds']:.1f} | "
            f"{f['reached']}/{f['seeds']} | {_commit(row)} |"
        )
    return lines


def _accuracy_table(rows: list[dict]) -> list[str]:
    lines = ["| device | config | seeds | median test accuracy | spread | median training seconds | commit |"]
    lines.append("|" + "---|" * 7)
    for row in rows:
        f = row["figures"]
        lines.append(
            f"| {_device_name(row['fingerprint'])} | {row['point']['config']} | {','.join(map(str, f['seeds']))} | "
            f"{f['median_accuracy']:.4f} | {f['min_accuracy']:.4f}–{f['max_accuracy']:.4f} | "
            f"{f['median_train_seconds']:.0f} | {_commit(row)} |"
        )
    return lines


def _oom_table(rows: list[dict]) -> list[str]:
    lines = ["| device | point | batch | stopped | error | commit |", "|" + "---|" * 6]
    for row in rows:
        error = str(row["figures"].get("error", "")).replace("|", "/")[:120]
        lines.append(
            f"| {_device_name(row['fingerprint'])} | {_label(row)} | {row['point'].get('batch_size')} | "
            f"{row['figures']['stopped']} | {error} | {_commit(row)} |"
        )
    return lines


def leaderboard(rows: list[dict]) -> str:
    """Markdown: per device kind, model and width, the best throughput point (with MFU against the datasheet, the
    fraction of the measured ceiling, arithmetic intensity and peak memory), then time-to-accuracy results and the
    batch sizes that ran out of memory."""
    lines = _throughput_table(rows)
    tta = [r for r in rows if r["kind"] == "time_to_accuracy"]
    if tta:
        lines += ["", *_tta_table(tta)]
    accuracy = [r for r in rows if r["kind"] == "accuracy"]
    if accuracy:
        lines += ["", "Test accuracy of full runs (a recipe's claim):", "", *_accuracy_table(accuracy)]
    oom = [r for r in rows if r["kind"] == "out_of_memory"]
    if oom:
        lines += ["", "Out of memory (a batch sweep's end):", "", *_oom_table(oom)]
    if any(r["kind"] == PREDICTED for r in rows):
        from harness import predicted

        lines += ["", *predicted.section(rows)]
    return "\n".join(lines) + "\n"


def plots(rows: list[dict], out: Path) -> list[Path]:
    """Throughput against batch size per device kind, the step-time spread of every point, and the roofline
    (:func:`harness.roofline.draw`)."""
    from harness import pictures

    with pictures.drawing():
        drawn = _plots(rows, out, pictures)
        return [*drawn, roofline.draw(rows, Path(out) / "roofline.png", pictures, _label_batch, _device_name)]


def _label_batch(row: dict) -> str:
    return f"{_label(row)} b{row['point'].get('batch_size')}"


def _plots(rows: list[dict], out: Path, pictures) -> list[Path]:
    plt = pictures.plt
    series: dict = defaultdict(list)
    for row in rows:
        if row["kind"] == "throughput":
            series[(_device_name(row["fingerprint"]), f"{row.get('framework', 'jax')} {_label(row)}")].append(row)
    devices = sorted({d for d, _ in series})
    fig, axes = plt.subplots(len(devices) or 1, 1, figsize=(10, 4 * max(1, len(devices))), squeeze=False)
    for ax, device in zip(axes[:, 0], devices, strict=False):
        for (d, label), points in sorted(series.items()):
            if d == device:
                points = sorted(points, key=lambda r: r["point"]["batch_size"])
                ax.plot(
                    [r["point"]["batch_size"] for r in points],
                    [r["figures"]["examples_per_sec"] for r in points],
                    "o-",
                    label=label,
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("global batch size")
        ax.set_ylabel("examples/s")
        ax.set_title(device)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    throughput = pictures.save(fig, Path(out) / "throughput_vs_batch.png")
    points = [r for r in rows if r["kind"] == "throughput"]
    fig, ax = plt.subplots(figsize=(10, max(3, 0.28 * len(points) + 1)))
    for i, row in enumerate(points):
        f = row["figures"]
        ax.errorbar(
            f["step_seconds_median"] * 1e3,
            i,
            xerr=[
                [(f["step_seconds_median"] - f["step_seconds_p10"]) * 1e3],
                [(f["step_seconds_p90"] - f["step_seconds_median"]) * 1e3],
            ],
            fmt="o",
            color=pictures.ACCENT,
        )
    ax.set_yticks(range(len(points)), [_label_batch(r) for r in points], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("step time, ms (median, bars p10–p90)")
    ax.set_title("Step-time spread")
    fig.tight_layout()
    return [throughput, pictures.save(fig, Path(out) / "step_time_spread.png")]


POINT_DEFAULTS = {"width": 1}  # point keys added later, at the value that rows written before them measured


def same_point(a: dict, b: dict) -> bool:
    """Whether two rows' points are the same point (a key a row predates counts at its default)."""
    return {**POINT_DEFAULTS, **a} == {**POINT_DEFAULTS, **b}


def compare(fresh: list[dict], baseline: list[dict], tolerance: float) -> tuple[list[str], int]:
    """(regressions of ``fresh`` against the ``baseline`` rows of the same machine and point, points matched)."""
    problems, matched = [], 0
    baseline = [b for b in baseline if b["kind"] != PREDICTED]  # a prediction is never a baseline
    for row in fresh:
        same = [
            b
            for b in baseline
            if b["kind"] == row["kind"]
            and same_point(b["point"], row["point"])
            and machine_key(b["fingerprint"]) == machine_key(row["fingerprint"])
        ]
        if row["kind"] == "time_to_accuracy":
            if row["figures"]["reached"] < row["figures"]["seeds"]:
                problems.append(
                    f"{row['point']['config']}: {row['figures']['reached']}/{row['figures']['seeds']} "
                    f"seeds reached {row['point']['target']}"
                )
            continue
        if not same:
            continue
        matched += 1
        reference = sorted(b["figures"]["examples_per_sec"] for b in same)[len(same) // 2]
        got = row["figures"]["examples_per_sec"]
        if got < reference * (1 - tolerance):
            problems.append(
                f"{_label(row)} batch {row['point']['batch_size']}: {got:,.0f} examples/s is "
                f"{1 - got / reference:.0%} below the baseline {reference:,.0f} (tolerance {tolerance:.0%})"
            )
    return problems, matched
