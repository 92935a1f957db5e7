"""Where a bench point sits: its roofline figures (FLOPs and bytes per step, achieved FLOP/s, arithmetic intensity,
MFU against the datasheet, the fraction of the measured ceiling) and the roofline picture of a ledger.

FLOPs and bytes come from XLA's cost analysis of the compiled per-device step program, times the devices: the
whole step. Its bytes are every operation's operands and results, not memory traffic: data that stays in a cache
counts too, so a point can sit above the memory-bandwidth diagonal. Rates are for all the devices a point ran on;
so are its ceilings, except on a CPU, where fake devices share the cores and the datasheet peak and measured
ceiling are the whole CPU's.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from harness import ceiling, peaks, runtime

DTYPE_COLORS = {"float32": "#1f77b4", "bfloat16": "#d62728"}


def _positive(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _ratio(a, b) -> float | None:
    return a / b if _positive(a) and _positive(b) else None


def cost(analysis) -> dict:
    """``{"flops", "bytes"}`` of one compiled program from ``compiled.cost_analysis()`` (None where missing)."""
    analysis = analysis[0] if isinstance(analysis, list | tuple) else analysis
    analysis = analysis or {}
    flops, accessed = analysis.get("flops"), analysis.get("bytes accessed")
    return {
        "flops": float(flops) if _positive(flops) else None,
        "bytes": float(accessed) if _positive(accessed) else None,
    }


def figures(program: dict, step_seconds: float, batch_size: int, devices: list, dtype: str) -> dict:
    """A row's roofline figures from the per-device ``program`` cost (:func:`cost`) of one step."""
    n, kind, on_cpu = len(devices), devices[0].device_kind, devices[0].platform == "cpu"
    scale = 1 if on_cpu else runtime.chip_count(devices)  # the peak table is per chip (a CPU: the whole CPU)
    flops = program["flops"] * n if program.get("flops") else None
    accessed = program["bytes"] * n if program.get("bytes") else None
    achieved = _ratio(flops, step_seconds)
    peak, peak_source = peaks.peak_flops(kind, dtype)
    bandwidth, bandwidth_source = peaks.peak_bandwidth(kind)
    measured = ceiling.flops(ceiling.measured(), dtype, n)
    mfu = _ratio(achieved, peak * scale if peak else None)
    of_ceiling = _ratio(achieved, measured)
    return {
        "devices": n,
        "chips": runtime.chip_count(devices),
        "flops_per_example": _ratio(flops, batch_size),
        "flops_per_step": flops,
        "bytes_per_step": accessed,
        "arithmetic_intensity": _ratio(flops, accessed),
        "achieved_flops_per_sec": achieved,
        "mfu": "n/a" if mfu is None else mfu,
        "peak_flops_per_device": peak,
        "peak_source": peak_source,
        "peak_bandwidth_per_device": bandwidth,
        "bandwidth_source": bandwidth_source,
        "ceiling_flops_per_sec": measured,
        "ceiling_fraction": "n/a" if of_ceiling is None else of_ceiling,
    }


def _devices(row: dict) -> int:
    f = row["figures"]
    if isinstance(f.get("devices"), int):
        return f["devices"]
    return max(1, round(f["examples_per_sec"] / (f.get("examples_per_sec_per_device") or f["examples_per_sec"])))


def ceilings(rows: list[dict]) -> tuple[dict, dict]:
    """Compute ceilings ``{(dtype, "datasheet"|"measured"): FLOP/s}`` and bandwidths ``{kind: bytes/s}`` of a
    panel's rows (the highest each row reports: calibrations of different runs differ a little)."""
    compute, memory = {}, {}
    for row in rows:
        f, fp, n = row["figures"], row["fingerprint"], _devices(row)
        scale = 1 if fp.get("platform") == "cpu" else f.get("chips", n)  # the datasheet figures are per chip
        dtype = row["point"].get("dtype", "float32")
        found = {
            (dtype, "datasheet"): f["peak_flops_per_device"] * scale
            if _positive(f.get("peak_flops_per_device"))
            else None,
            (dtype, "measured"): ceiling.flops(fp.get("ceiling"), dtype, n),
        }
        bandwidths = {
            "datasheet": f["peak_bandwidth_per_device"] * scale
            if _positive(f.get("peak_bandwidth_per_device"))
            else None,
            "measured": ceiling.bandwidth(fp.get("ceiling"), n),
        }
        for target, values in ((compute, found), (memory, bandwidths)):
            for key, value in values.items():
                if value:
                    target[key] = max(value, target.get(key, 0))
    return compute, memory


def _panel(ax, rows: list[dict], title: str, label: Callable[[dict], str]) -> None:
    compute, memory = ceilings(rows)
    xs = [r["figures"]["arithmetic_intensity"] for r in rows]
    ys = [r["figures"]["achieved_flops_per_sec"] for r in rows]
    tops = list(compute.values()) or [max(ys)]
    ridges = [c / b for c in tops for b in memory.values()]
    lo, hi = min(xs + ridges) / 4, max(xs + ridges) * 4
    bottom, top = min(ys) / 5, max(tops + ys) * 2
    lines: dict = defaultdict(list)  # one line per value: dtypes with the same ceiling share it
    for (dtype, kind), value in sorted(compute.items()):
        lines[(kind, value)].append(dtype)
    for (kind, value), dtypes in lines.items():
        measured = kind == "measured"  # measured labels at the right, datasheet ones at the left
        ax.axhline(value, color=DTYPE_COLORS.get(dtypes[0], "gray"), ls="-" if measured else "--", lw=1.2)
        text = f"{'/'.join(dtypes)} {kind} {value / 1e9:,.0f} GFLOP/s"
        ax.text(hi / 1.1 if measured else lo * 1.1, value * 1.06, text, fontsize=7, ha="right" if measured else "left")
    for kind, value in sorted(memory.items()):
        ax.plot([lo, hi], [value * lo, value * hi], color="gray", ls="-" if kind == "measured" else "--", lw=1.2)
        x = min(max(math.sqrt(bottom * top) / value, lo * 1.1), hi / 4)  # on the diagonal, mid-height if it can
        ax.text(x, value * x * 1.3, f"memory {kind} {value / 1e9:,.0f} GB/s", fontsize=7, color="gray", ha="right")
    for row, x, y in zip(rows, xs, ys, strict=True):
        dtype = row["point"].get("dtype", "float32")
        ax.plot(x, y, "o", color=DTYPE_COLORS.get(dtype, "gray"), ms=5)
        ax.annotate(label(row), (x, y), xytext=(4, -3), textcoords="offset points", fontsize=6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(bottom, top)
    ax.set_xlabel("arithmetic intensity, FLOP per byte accessed (XLA cost analysis)")
    ax.set_ylabel("FLOP/s achieved")
    ax.set_title(f"Roofline: {title} (dashed: datasheet, solid: measured ceiling)")
    ax.grid(alpha=0.3, which="both")


def panels(rows: list[dict], device: Callable[[dict], str]) -> dict[str, list[dict]]:
    """The throughput rows that carry FLOPs and bytes per step (older rows do not), by device kind and count."""
    found: dict = defaultdict(list)
    for row in rows:
        f = row["figures"]
        drawable = _positive(f.get("arithmetic_intensity")) and _positive(f.get("achieved_flops_per_sec"))
        if row["kind"] == "throughput" and drawable:
            found[f"{device(row['fingerprint'])}, {_devices(row)} device(s)"].append(row)
    return dict(found)


def draw(rows: list[dict], path: Path, pictures, label: Callable[[dict], str], device: Callable[[dict], str]) -> Path:
    """The roofline PNG of the throughput rows that carry FLOPs and bytes per step: one panel per device kind and
    device count, the compute and bandwidth ceilings (datasheet and measured), one labelled dot per row."""
    plt = pictures.plt
    drawn = panels(rows, device)
    fig, axes = plt.subplots(max(1, len(drawn)), 1, figsize=(10, 6 * max(1, len(drawn))), squeeze=False)
    for ax, (title, members) in zip(axes[:, 0], sorted(drawn.items()), strict=False):
        _panel(ax, members, title, label)
    if not drawn:
        axes[0, 0].text(0.5, 0.5, "no ledger row carries FLOPs and bytes per step yet", ha="center", va="center")
        axes[0, 0].set_axis_off()
    fig.tight_layout()
    return pictures.save(fig, Path(path))
