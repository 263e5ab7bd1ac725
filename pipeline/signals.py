"""Ctrl-C (SIGINT) and SIGTERM: stopping a run before it publishes, and
holding them back while it is published; a command's exit."""

from __future__ import annotations

import contextlib
import gc
import signal
import sys
import threading

# The signals that stop a run (``imgclass classify``: exit 130 / 143).
STOPPING = (signal.SIGINT, signal.SIGTERM)

# The signals :func:`stopping` turned into KeyboardInterrupt, while it is
# active: what :func:`deferrable`'s ``hold`` checks.
_stopped: list[int] = []


@contextlib.contextmanager
def _handling(signals, handler):
    """Installs ``handler`` for each of ``signals`` that is not ignored (a
    signal ignored from the start, as a job started in the background
    ignores Ctrl-C, stays ignored) and restores the previous handlers
    afterwards. Handlers can only be installed in the main thread;
    elsewhere the block runs as it is (Python delivers signals to the main
    thread anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    try:
        for signum in signals:
            if signal.getsignal(signum) != signal.SIG_IGN:
                previous[signum] = signal.signal(signum, handler)
        yield
    finally:
        for signum, old in previous.items():
            # None: a handler not set from Python; the default is closest
            signal.signal(signum, signal.SIG_DFL if old is None else old)


@contextlib.contextmanager
def stopping(on_signal=lambda: None, signals=STOPPING):
    """Each of ``signals`` raises KeyboardInterrupt (after calling
    ``on_signal()``); yields the list of those received. A library may
    swallow that exception (a finalizer or a callback that catches
    everything, e.g. while a database catalog is opened): a run that goes
    on regardless is still stopped before it publishes, by
    :func:`deferrable`'s ``hold``. Installed as :func:`_handling` does."""
    def handler(signum, frame):
        _stopped.append(signum)
        on_signal()
        raise KeyboardInterrupt

    try:
        with _handling(signals, handler):
            yield _stopped
    finally:
        _stopped.clear()


@contextlib.contextmanager
def deferred(signals=STOPPING):
    """Records ``signals`` instead of acting on them while the block runs;
    yields the list of those that arrived (in order). The previous
    handlers are restored afterwards, and the caller decides what the
    recorded signals mean. Installed as :func:`_handling` does.
    """
    received: list[int] = []
    with _handling(signals, lambda signum, frame: received.append(signum)):
        yield received


@contextlib.contextmanager
def deferrable(signals=STOPPING):
    """Yields ``hold``: calling it holds ``signals`` back as :func:`deferred`
    does, from that moment until the block ends, and returns the list of
    those received (the same list on every call). Not called, the block
    changes nothing. For work whose last part must not be cut: a run holds
    signals from the start of publishing until it has reported. Called
    after :func:`stopping` has seen a signal whose KeyboardInterrupt did not
    stop the work, ``hold`` raises it again: nothing is held, the work is
    not completed."""
    with contextlib.ExitStack() as stack:
        received: list[list[int]] = []

        def hold() -> list[int]:
            if not received and _stopped:
                raise KeyboardInterrupt
            if not received:
                received.append(stack.enter_context(deferred(signals)))
            return received[0]

        yield hold


def exit_process(code: int, *, ignore_stops: bool = True) -> None:
    """Exits with ``code`` once a command (or a worker) is done. With
    ``ignore_stops`` (a command: its outcome is reported), Ctrl-C or
    SIGTERM while the interpreter shuts down (Theano's cache clean-up)
    changes neither the exit code nor stderr; a worker leaves them as they
    are, so that its parent can still stop it.

    The objects left are frozen first (``gc.freeze``), so that the
    collections of the interpreter's shut-down skip them: after a run they
    are the hundreds of thousands Beam and Theano made, and walking them
    took 0.4-0.6 s of every command's wall time, after its summary
    (bench/startup.py). Nothing is skipped: finalizers and ``atexit``
    handlers still run, and the memory goes back to the system with the
    process."""
    if ignore_stops:
        for signum in STOPPING:
            signal.signal(signum, signal.SIG_IGN)
    gc.freeze()
    sys.exit(code)
