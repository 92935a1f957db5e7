"""Turns SIGTERM and SIGINT (a notebook's stop button, Ctrl-C, a preemption notice) into a polite stop request.

While installed, the first signal sets :attr:`StopSignals.requested`; the training loop sees it after the current
step, saves a checkpoint, waits for it to commit and returns. A second SIGINT interrupts at once.

The ``harness`` command installs these handlers on its first line (``polite`` for ``harness train``, which stops at
the next step; every other command is interrupted at once), and ``train_and_evaluate`` takes over a stop asked for
during start-up. A ``KeyboardInterrupt`` raised where Python cannot raise it — inside a garbage-collector callback
(JAX registers one), a weakref callback or a ``__del__`` — would be dropped ("Exception ignored in"): while the
handlers are installed, ``sys.unraisablehook`` catches it and delivers SIGINT again 50 ms later.

In a multi-process run every process must stop at the same step, so the decision goes through JAX's preemption
service (running once ``jax.distributed`` is initialised): it catches SIGTERM on any process and every process
learns the same sync step from :meth:`StopSignals.check`. A SIGINT is forwarded to it as a SIGTERM of this process.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading

STOPPING = b"harness: stopping after the current step, with a checkpoint (Ctrl-C again to quit now)\n"


def _redeliver_dropped_interrupt(unraisable, previous) -> None:
    """``sys.unraisablehook`` while the handlers are installed: an interrupt that Python would drop is sent again."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        threading.Timer(0.05, _thread.interrupt_main).start()
        return
    previous(unraisable)


class StopSignals:
    """Context manager: installs the handlers in the main thread and restores the previous ones on exit."""

    def __init__(self, multi_process: bool = False, polite: bool = True):
        self.requested: str | None = None
        self.multi_process = multi_process
        self.polite = polite  # False: SIGINT interrupts at once (and SIGTERM keeps its default)
        self._previous: dict = {}
        self._previous_unraisablehook = sys.unraisablehook

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and (self.requested or not self.polite):
            self.requested = self.requested or "SIGINT"
            raise KeyboardInterrupt
        if self.multi_process:  # JAX's service handles SIGTERM; tell it, and let it pick the step
            self.requested = "SIGINT (waiting for the other processes)"
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.requested = signal.Signals(signum).name
        os.write(2, STOPPING)

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
            earlier = getattr(signal.getsignal(signal.SIGINT), "__self__", None)
            if isinstance(earlier, StopSignals) and earlier.requested:  # asked during start-up: not lost
                self.requested = earlier.requested
            # multi-process: SIGTERM stays with JAX's preemption notifier
            signals = (signal.SIGINT,) if self.multi_process or not self.polite else (signal.SIGTERM, signal.SIGINT)
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)
            previous = self._previous_unraisablehook = sys.unraisablehook
            sys.unraisablehook = lambda unraisable: _redeliver_dropped_interrupt(unraisable, previous)
            if self.requested and self.multi_process:
                os.kill(os.getpid(), signal.SIGTERM)  # JAX's service decides the common step
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._previous:
            sys.unraisablehook = self._previous_unraisablehook
        self._previous.clear()
