"""Turns SIGTERM and SIGINT (a notebook's stop button, Ctrl-C, a preemption notice) into a polite stop request.

While installed, the first signal sets :attr:`StopSignals.requested`; the training loop sees it after the current
step, saves a checkpoint, waits for it to commit and returns. A second SIGINT interrupts at once.
"""

from __future__ import annotations

import signal
import threading


class StopSignals:
    """Context manager: installs the handlers in the main thread and restores the previous ones on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
