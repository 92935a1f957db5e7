"""Turns SIGTERM and SIGINT (a notebook's stop button, Ctrl-C, a preemption notice) into a polite stop request.

While installed, the first signal sets :attr:`StopSignals.requested`; the training loop sees it after the current
step, saves a checkpoint, waits for it to commit and returns. A second SIGINT interrupts at once.

The ``harness`` command installs these handlers on its first line (``polite`` for ``harness train`` and ``harness
bench tta``, which stop after the current step; every other command is interrupted at once), and
``train_and_evaluate``'s own take over from them. In the command's own process (``owner``) what must end it now
ends it with one line and :func:`os._exit`, never with an exception raised at an arbitrary point (raised inside a
callback from C++, one aborts the process with a traceback): a stop during ``harness train``'s start-up (data
loading, compilation; nothing to save yet: the loop calls :func:`steps_started` before its first step) exits 0, a
second Ctrl-C exits 130. A ``KeyboardInterrupt`` raised where Python cannot raise it — inside a garbage-collector
callback (JAX registers one), a weakref callback or a ``__del__`` — would be dropped ("Exception ignored in"): while
the handlers are installed, ``sys.unraisablehook`` catches it and delivers SIGINT again 50 ms later.

In a multi-process run every process must stop at the same step, so the decision goes through JAX's preemption
service (running once ``jax.distributed`` is initialised): it catches SIGTERM on any process and every process
learns the same sync step from :meth:`StopSignals.check`. A SIGINT is forwarded to it as a SIGTERM of this process.
"""

from __future__ import annotations

import _thread
import contextlib
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
    """Context manager: installs the handlers in the main thread and restores the previous ones on exit.

    ``polite``: the first signal is a stop request (else SIGINT interrupts at once and SIGTERM keeps its default);
    ``starting``: until :func:`steps_started`, a signal ends the ``owner``'s process at once; ``owner``: the
    ``harness`` command's own process (see the module docstring); ``stopping``: the line a stop request prints.
    Handlers installed over earlier ones take over their request, ``starting``, ``owner``, ``stopping`` and their
    impoliteness, and hand the request and ``starting`` back on exit."""

    def __init__(
        self,
        multi_process: bool = False,
        polite: bool = True,
        starting: bool = False,
        owner: bool = False,
        stopping: bytes = STOPPING,
    ):
        self.requested: str | None = None
        self.multi_process = multi_process
        self.polite = polite
        self.starting, self.owner, self.stopping = starting, owner, stopping
        self._earlier: StopSignals | None = None
        self._previous: dict = {}
        self._previous_unraisablehook = sys.unraisablehook

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.owner and self.polite and self.starting and not self.multi_process:
            self.requested = name
            _exit_now(f"harness: stopped by {name} during start-up, before the first step: nothing to save", 0)
        if signum == signal.SIGINT and (self.requested or not self.polite):
            self.requested = self.requested or "SIGINT"
            if self.owner and self.polite:
                _exit_now("harness: interrupted", 130)
            raise KeyboardInterrupt
        if self.multi_process:  # JAX's service handles SIGTERM; tell it, and let it pick the step
            self.requested = "SIGINT (waiting for the other processes)"
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.requested = name
        os.write(2, self.stopping)

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
        if _main_thread():
            earlier = installed()
            if earlier is not None:  # e.g. the command's: a stop asked during start-up is not lost
                self._earlier, self.requested = earlier, self.requested or earlier.requested
                self.starting, self.owner = self.starting or earlier.starting, self.owner or earlier.owner
                self.polite = self.polite and earlier.polite  # a command interrupted at once stays so
                self.stopping = earlier.stopping
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
        if self._earlier is not None:
            self._earlier.starting = self.starting
            self._earlier.requested = self._earlier.requested or self.requested
            self._earlier = None


def _exit_now(line: str, status: int) -> None:
    """Ends this process now with ``line`` on stderr (what was printed before is flushed first)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os.write(2, f"{line}\n".encode())
    os._exit(status)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def installed() -> StopSignals | None:
    """The :class:`StopSignals` that handles SIGINT now, if any."""
    handler = getattr(signal.getsignal(signal.SIGINT), "__self__", None) if _main_thread() else None
    return handler if isinstance(handler, StopSignals) else None


def steps_started() -> None:
    """The first step is about to run: from now on a stop is polite (saved after the current step)."""
    handler = installed()
    if handler is not None:
        handler.starting = False


def stop_requested() -> str | None:
    """What asked the installed handlers to stop (a signal's name), else None."""
    handler = installed()
    return handler.requested if handler is not None else None
