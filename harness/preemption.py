"""Turns SIGTERM and SIGINT (a notebook's stop button, Ctrl-C, a preemption notice) into a polite stop request.

While installed, the first signal sets :attr:`StopSignals.requested`; the training loop sees it after the current
step, saves a checkpoint, waits for it to commit and returns. A second SIGINT interrupts at once.

In a multi-process run every process must stop at the same step, so the decision goes through JAX's preemption
service (running once ``jax.distributed`` is initialised): it catches SIGTERM on any process and every process
learns the same sync step from :meth:`StopSignals.check`. A SIGINT is forwarded to it as a SIGTERM of this process.
"""

from __future__ import annotations

import os
import signal
import threading


class StopSignals:
    """Context manager: installs the handlers in the main thread and restores the previous ones on exit."""

    def __init__(self, multi_process: bool = False):
        self.requested: str | None = None
        self.multi_process = multi_process
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.multi_process:  # JAX's service handles SIGTERM; tell it, and let it pick the step
            self.requested = "SIGINT (waiting for the other processes)"
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.requested = signal.Signals(signum).name

    def check(self, step: int) -> str | None:
        """What asked to stop, else None; multi-process: the same answer on every process at every step."""
        if not self.multi_process:
            return self.requested
        from jax.experimental import multihost_utils

        if multihost_utils.reached_preemption_sync_point(step):
            self.requested = "SIGTERM (preemption sync point)"
            self.multi_process = False  # decided: later checks return it as is
            return self.requested
        return None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            # multi-process: SIGTERM stays with JAX's preemption notifier
            signals = (signal.SIGINT,) if self.multi_process else (signal.SIGTERM, signal.SIGINT)
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
