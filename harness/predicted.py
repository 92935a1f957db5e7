"""Tables of the ``predicted`` ledger rows (:mod:`harness.aot`): what XLA's TPU compiler predicts for harness's
step on TPU slices compiled from a CPU host — for the leaderboard, and for README between its markers.

A series is one accelerator, model, width, dtype and strategy; its rows are the batches compiled (the grid's
start, and with ``--fit`` the search's batches, the largest that fits carrying the search's result). Where a
measured throughput row of the same device kind and count, model, width, dtype and batch exists, the table shows
measured ÷ predicted examples/s.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

PREDICTED = "predicted"
TITLE = "Predicted by XLA's TPU compiler (not measured)"
README_BEGIN = "<!-- predicted-tpu:begin (rendered by `harness bench report --readme README.md`) -->"
README_END = "<!-- predicted-tpu:end -->"


def _series_key(row: dict) -> tuple:
    """(accelerator, model, width, dtype, strategy, and what else tells two programs apart)."""
    p = row["point"]
    rest = tuple(p.get(k) for k in ("steps_per_dispatch", "micro_batches", "conv", "num_devices"))
    return (p["accelerator"], p["model"], p.get("width", 1), p["dtype"], p.get("parallel", "pmap"), *rest)


def series(rows: list[dict]) -> dict[tuple, dict[int, dict]]:
    """Predicted rows by series and batch (the newest row of each)."""
    found: dict = defaultdict(dict)
    for row in sorted((r for r in rows if r["kind"] == PREDICTED), key=lambda r: r["timestamp"]):
        found[_series_key(row)][row["point"]["batch_size"]] = row
    return dict(found)


def _largest(batches: dict[int, dict]) -> dict | None:
    fitted = [r for r in batches.values() if "fit" in r["figures"]]
    return max(fitted, key=lambda r: r["timestamp"]) if fitted else None


def _measured(rows: list[dict], predicted: dict) -> float | None:
    """Measured ÷ predicted examples/s at the predicted row's point, where a measured row of it exists."""
    fp, p = predicted["fingerprint"], predicted["point"]
    same = [
        r
        for r in rows
        if r["kind"] == "throughput"
        and r.get("framework", "jax") == "jax"
        and r["fingerprint"].get("device_kind") == fp["device_kind"]
        and r["fingerprint"].get("device_count") == fp["device_count"]
        and all(r["point"].get(k, 1 if k == "width" else None) == p.get(k) for k in ("model", "width", "dtype"))
        and r["point"].get("parallel", "pmap") == p.get("parallel", "pmap")
        and r["point"].get("batch_size") == p["batch_size"]
    ]
    rate = predicted["figures"].get("examples_per_sec")
    if not same or not rate:
        return None
    return max(r["figures"]["examples_per_sec"] for r in same) / rate


def _rate(row: dict | None) -> str:
    rate = row and row["figures"].get("examples_per_sec")
    return f"{rate:,.0f}" if rate else "n/a"


def _mfu(row: dict | None) -> str:
    mfu = row and row["figures"].get("mfu")
    return f"{mfu:.1%}" if isinstance(mfu, float) else "n/a"


def _largest_text(row: dict | None) -> str:
    if row is None:
        return "—"
    fit = row["figures"]["fit"]
    if fit["largest"] is None:
        return f"none from {fit['first_too_big']:,}"
    return f"≥ {fit['largest']:,}" if fit["capped"] else f"{fit['largest']:,}"


def _memory(row: dict | None) -> str:
    if row is None or "memory_per_device" not in row["figures"]:
        return "does not fit" if row is not None else "—"
    f = row["figures"]
    share = f["memory_per_device"] / f["hbm_per_device"] if f.get("hbm_per_device") else None
    return f"{f['memory_per_device'] / 2**20:,.0f} MiB" + (f" ({share:.1%})" if share is not None else "")


def _slice(row: dict) -> str:
    fp = row["fingerprint"]
    return f"{fp['accelerator']} ({fp['topology']}: {fp['chips']} chips, {fp['hosts']} host{'s' * (fp['hosts'] > 1)})"


def table(rows: list[dict], widths: tuple[int, ...] | None = None, dtypes: tuple[str, ...] | None = None) -> list[str]:
    """Markdown: one line per series (``widths``, ``dtypes``: only those), its first batch's prediction and its
    largest batch."""
    lines = [
        "| slice | model | width | dtype | parallel | batch | predicted ex/s | per chip | MFU | memory/device "
        "| largest batch that fits | ex/s there | MFU there | measured ÷ predicted |",
        "|" + "---|" * 14,
    ]
    for key, batches in sorted(series(rows).items(), key=lambda kv: _order(kv[0], kv[1])):
        if (widths is not None and key[2] not in widths) or (dtypes is not None and key[3] not in dtypes):
            continue
        first = batches[min(batches)]
        largest = _largest(batches)
        ratio = _measured(rows, first)
        per_chip = first["figures"].get("examples_per_sec_per_chip")
        lines.append(
            f"| {_slice(first)} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {min(batches)} | {_rate(first)} | "
            f"{f'{per_chip:,.0f}' if per_chip else 'n/a'} | {_mfu(first)} | {_memory(first)} | "
            f"{_largest_text(largest)} | {_rate(largest)} | {_mfu(largest)} | "
            f"{f'{ratio:.2f}' if ratio is not None else '—'} |"
        )
    return lines


GENERATIONS = ("v2", "v3", "v4", "v5e", "v5p", "v6e")


def _order(key: tuple, batches: dict) -> tuple:
    """By generation, then slice size, then the series' own key."""
    accelerator = key[0]
    generation = accelerator.split("-")[0].split(":")[0]
    rank = GENERATIONS.index(generation) if generation in GENERATIONS else len(GENERATIONS)
    chips = next(iter(batches.values()))["fingerprint"].get("chips", 0)
    return (rank, chips, *map(str, key))


def _provenance(rows: list[dict]) -> str:
    predicted = [r for r in rows if r["kind"] == PREDICTED]
    libtpu = sorted({str(r["fingerprint"].get("libtpu")) for r in predicted})
    hosts = sorted({str(r["fingerprint"].get("compiled_on")) for r in predicted})
    return (
        f"Compiled on {', '.join(hosts)} with libtpu {', '.join(libtpu)} for described slices (no TPU ran): memory "
        "per device from XLA's memory analysis against the chip's HBM, step time from XLA's TPU cost model "
        "(`optimal_seconds`; a roofline of FLOPs and bytes where it gives none), MFU against the chip's dense "
        "datasheet peak. Predictions, not measurements."
    )


def section(rows: list[dict]) -> list[str]:
    """The leaderboard's section of predicted rows."""
    return [f"## {TITLE}", "", _provenance(rows), "", *table(rows)]


def readme_block(rows: list[dict]) -> str:
    """README's table between its markers: every slice's width-1 models in float32 (harness's default dtype)."""
    lines = table(rows, widths=(1,), dtypes=("float32",))
    note = "Width 1 in float32; every width and bfloat16 in [LEADERBOARD.md](benchmarks/LEADERBOARD.md)."
    return "\n".join([README_BEGIN, "", _provenance(rows), note, "", *lines, "", README_END])


def update_readme(path: Path, rows: list[dict]) -> bool:
    """Replaces the block between README's markers with :func:`readme_block`; False when it has no markers."""
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(README_BEGIN) + r".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        return False
    path.write_text(pattern.sub(lambda _: readme_block(rows), text), encoding="utf-8")
    return True
