"""Profiler traces on demand, and what took the time in them.

``harness train --config.profile_steps=A:B`` traces training steps A to B (1-based, whole dispatches: with 16 steps
per dispatch the trace covers the dispatches holding A and B) into ``WORKDIR/profile``; ``harness bench --trace
DIR`` traces each point's timed steps into ``DIR/<point>``. Both are ``jax.profiler`` traces: TensorBoard's profile
plugin reads the directory (``tensorboard --logdir DIR``, with ``tensorboard-plugin-profile``), and Perfetto
(https://ui.perfetto.dev) opens its ``perfetto_trace.json.gz``. After each trace the top XLA operations by time are
printed, read from that file: every event XLA records for an HLO operation carries its name (``hlo_op``) — XLA:CPU
records them per thunk without any flag on jax 0.10, GPUs and TPUs per kernel.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax

from harness.errors import ConfigError

TRACE_FILE = "perfetto_trace.json.gz"


def parse_steps(text: str) -> tuple[int, int] | None:
    """``"A:B"`` → (A, B) with 1 ≤ A ≤ B; ``""`` → None (no trace). Anything else is a one-line ConfigError."""
    if not text:
        return None
    first, sep, last = text.partition(":")
    try:
        a, b = int(first), int(last)
    except ValueError:
        a, b = 0, -1
    if not sep or not 1 <= a <= b:
        raise ConfigError(f"config.profile_steps={text!r}: expected FIRST:LAST steps, 1 <= FIRST <= LAST (e.g. 20:30)")
    return a, b


@contextlib.contextmanager
def trace(directory: Path) -> Iterator[Path]:
    """Records a ``jax.profiler`` trace (with its Perfetto file) of the block into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    jax.profiler.start_trace(str(directory), create_perfetto_trace=True)
    try:
        yield directory
    finally:
        jax.profiler.stop_trace()


def latest_trace(directory: Path) -> Path | None:
    """The newest Perfetto trace file under ``directory`` (jax writes ``plugins/profile/<time>/``), or None."""
    found = sorted(Path(directory).glob(f"plugins/profile/*/{TRACE_FILE}"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


@dataclasses.dataclass(frozen=True)
class OpTime:
    """One XLA operation's total time in a trace."""

    name: str
    seconds: float
    count: int
    share: float  # of the time of all XLA operations in the trace


def _self_times(events: list[dict]) -> list[tuple[dict, float]]:
    """Each event with its own time in microseconds: its duration less that of the events nested in it on the same
    thread (a ``while`` loop's event holds its body's operations; counting both would count them twice)."""
    by_thread: dict = collections.defaultdict(list)
    for event in events:
        by_thread[event.get("pid"), event.get("tid")].append(event)
    timed = []
    for thread in by_thread.values():
        stack: list[list] = []  # [event, own time] of the events still open
        for event in sorted(thread, key=lambda e: (e.get("ts", 0.0), -e.get("dur", 0.0))):
            start, dur = event.get("ts", 0.0), event.get("dur", 0.0)
            while stack and stack[-1][0].get("ts", 0.0) + stack[-1][0].get("dur", 0.0) <= start:
                stack.pop()
            if stack:
                stack[-1][1] -= dur
            entry = [event, dur]
            stack.append(entry)
            timed.append(entry)
    return [(event, own) for event, own in timed]


def top_ops(trace_file: Path, n: int = 10) -> list[OpTime]:
    """The ``n`` XLA operations that took the most time of their own in a Perfetto trace file (summed over their
    events; nested operations' time belongs to them, not to the loop that holds them)."""
    with gzip.open(trace_file, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    ops = [e for e in events if e.get("ph") == "X" and "hlo_op" in (e.get("args") or {})]
    seconds: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    for event, own in _self_times(ops):
        name = f"{event['args'].get('hlo_module', '?')}/{event['args']['hlo_op']}"
        seconds[name] += own / 1e6
        counts[name] += 1
    total = sum(seconds.values())
    return [OpTime(name, s, counts[name], s / total) for name, s in seconds.most_common(n)]


def summary_lines(directory: Path, n: int = 10) -> list[str]:
    """Where the trace in ``directory`` is and its top ``n`` operations, as lines to print."""
    found = latest_trace(directory)
    if found is None:
        return [f"profile: no trace was written in {directory}"]
    ops = top_ops(found, n)
    lines = [f"profile: trace in {directory} (TensorBoard: tensorboard --logdir {directory}; Perfetto: {found})"]
    if not ops:
        return [*lines, "profile: the trace holds no per-operation events"]
    lines.append(f"profile: top {len(ops)} XLA operations by time (of all operations' time)")
    lines += [f"  {op.share:6.1%}  {op.seconds * 1e3:9.2f} ms  {op.count:6d}×  {op.name}" for op in ops]
    return lines


class Profile:
    """The loop's trace action: starts before the dispatch holding step ``first`` and stops after the one holding
    ``last`` (waiting for it), then prints the top operations. ``steps`` None: does nothing."""

    def __init__(self, steps: tuple[int, int] | None, directory: Path | None, print_fn: Callable[[str], Any] = print):
        self.steps, self.directory, self.print = steps, directory, print_fn
        self._active: contextlib.ExitStack | None = None
        self.done = False

    def before(self, next_step: int, k: int) -> None:
        """Called before a dispatch of ``k`` steps starting at step ``next_step``."""
        if self.steps and not self.done and self._active is None and next_step + k - 1 >= self.steps[0]:
            self._active = contextlib.ExitStack()
            self._active.enter_context(trace(self.directory))

    def after(self, step: int, device_result: Any) -> None:
        """Called after a dispatch whose last step is ``step``, with its (device-resident) result."""
        if self._active is not None and step >= self.steps[1]:
            jax.block_until_ready(device_result)
            self.close()

    def close(self) -> None:
        """Stops a trace still running (the run ended or stopped first) and prints its summary."""
        if self._active is None:
            return
        active, self._active = self._active, None
        active.close()
        self.done = True
        for line in summary_lines(self.directory):
            self.print(line)
