"""``harness bench suite``: the standard hardware benchmark of the machine at hand, in one command and a time budget.

Four parts, each a list of grid points (:class:`harness.bench.Point`), then a time to accuracy:

- ``strategies``: the CNN at its training point under every parallel strategy (``pmap``, ``jit``, …);
- ``scale``: the MLP and the CNN at widths 1, 4 and 16 in float32 and bfloat16 on synthetic data (pure compute:
  throughput and MFU rising towards the chip's limit);
- ``batch``: a batch sweep of the CNN, doubling until throughput stops rising or memory runs out (recorded);
- ``data``: the MLP fed from device-resident data, from the host and from synthetic data (the input pipeline);
- ``tta``: ``fashion_mnist_cnn`` trained to 0.90 for one seed, when the dataset is at hand (skipped, saying why,
  when it cannot be read or downloaded).

On a CPU the points are smaller (a CPU takes seconds per wide step), and ``quick`` shrinks everything to the tiny
models (the suite's own test). Points left when the budget is spent are skipped and listed, never cut half-way.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from harness import bench, ledger
from harness.errors import HarnessError


@dataclasses.dataclass(frozen=True)
class Part:
    """One part of the suite: its points, measured one by one or each as a batch sweep."""

    name: str
    points: tuple[bench.Point, ...]
    sweep: bool = False


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What the suite measures on one kind of machine."""

    mlp: str
    cnn: str
    widths: tuple[int, ...]
    batch: int  # training's batch (per run, global)
    scale_batch: int  # the scale part's batch: large enough to fill the chip
    windows: int
    dispatches: int
    tta_config: str
    max_batch: int


ACCELERATOR = Sizes("mlp", "cnn", (1, 4, 16), 128, 1024, 5, 8, "fashion_mnist_cnn", 65536)
CPU = Sizes("mlp", "cnn", (1, 4, 16), 128, 256, 5, 2, "fashion_mnist_cnn", 1024)
QUICK = Sizes("mlp_tiny", "cnn_tiny", (1, 2), 16, 32, 5, 1, "smoke", 64)


def sizes(platform: str, quick: bool) -> Sizes:
    """The sizes for ``platform`` (``cpu``, ``gpu``, ``tpu``); ``quick``: the tiny ones."""
    return QUICK if quick else CPU if platform == "cpu" else ACCELERATOR


def parts(s: Sizes, strategies: tuple[str, ...], devices: int) -> list[Part]:
    """The suite's parts for sizes ``s`` on ``devices`` devices (global batches are multiples of the count)."""
    per = max(1, devices)

    def batch(b: int) -> int:
        return max(b // per, 1) * per

    P = bench.Point
    return [
        Part("strategies", tuple(P(s.cnn, batch(s.batch), parallel=p) for p in strategies)),
        Part(
            "scale",
            tuple(
                P(model, batch(s.scale_batch), dtype, data="synthetic", width=w)
                for model in (s.mlp, s.cnn)
                for dtype in ("float32", "bfloat16")
                for w in s.widths
            ),
        ),
        Part("batch", (P(s.cnn, batch(s.batch)),), sweep=True),
        Part("data", tuple(P(s.mlp, batch(s.batch), data=d, steps_per_dispatch=1) for d in bench.DATA_MODES)),
    ]


class Budget:
    """Seconds left of ``seconds`` by ``clock``; what was skipped for lack of them."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.perf_counter):
        self.clock, self.started, self.skipped = clock, clock(), []
        self.end = self.started + seconds

    def elapsed(self) -> float:
        """Seconds spent so far."""
        return self.clock() - self.started

    def allows(self, what: str) -> bool:
        if self.clock() < self.end:
            return True
        self.skipped.append(what)
        return False


def _measure_part(part: Part, s: Sizes, budget: Budget, show: Callable, print_fn: Callable[[str], None]) -> list[dict]:
    def say(p: bench.Point) -> None:  # which point, and the time so far
        print_fn(f"{part.name}: measuring {bench.label(p)}  ({budget.elapsed():.0f} s so far)")

    rows: list[dict] = []
    for point in map(bench.resolve, part.points):
        if not budget.allows(f"{part.name}: {point.model} w{point.width} b{point.batch_size} {point.dtype}"):
            continue
        if part.sweep:
            kw = {"windows": s.windows, "dispatches_per_window": s.dispatches}
            tried = bench.sweep(point, max_batch=s.max_batch, before=say, **kw)
        else:
            say(point)
            tried = [{"point": point, "figures": bench.measure(point, s.windows, s.dispatches)}]
        rows += ledger.tried_rows(tried, show, lambda line: print_fn(f"{part.name}: {line}"), {"suite": part.name})
    return rows


def _tta(s: Sizes, budget: Budget, print_fn: Callable[[str], None]) -> list[dict]:
    if not budget.allows(f"tta: {s.tta_config}"):
        return []
    try:
        figures = bench.time_to_accuracy(s.tta_config, 0.90, [0], print_fn=lambda line: print_fn(f"tta: {line}"))
    except HarnessError as e:  # no dataset here (offline, not prepared): the throughput rows stand alone
        print_fn(f"tta: skipped ({e})")
        return []
    run = figures["runs"][0]
    reached = f"{run['seconds']:.1f} s (epoch {run['epochs']})" if run["epochs"] else "not reached"
    print_fn(f"tta: {s.tta_config} to 0.90, seed 0: {reached}; final test_accuracy {run['accuracy']:.4f}")
    point = {"config": s.tta_config, "target": 0.90, "overrides": []}
    return [ledger.make_row("time_to_accuracy", point, {**figures, "suite": "tta"})]


def run(
    platform: str,
    devices: int,
    strategies: tuple[str, ...],
    *,
    quick: bool = False,
    budget_seconds: float = 420.0,
    show: Callable = print,
    print_fn: Callable[[str], None] = print,
) -> list[dict]:
    """Runs the suite for this machine; returns its ledger rows. ``show(point, figures)`` prints a measured row,
    ``print_fn`` everything else."""
    s = sizes(platform, quick)
    budget = Budget(budget_seconds)
    rows: list[dict] = []
    for part in parts(s, strategies, devices):
        print_fn(f"suite: {part.name}")
        rows += _measure_part(part, s, budget, show, print_fn)
    rows += _tta(s, budget, print_fn)
    if budget.skipped:
        print_fn(f"suite: the {budget_seconds:.0f} s budget ran out; skipped: {'; '.join(budget.skipped)}")
    return rows
