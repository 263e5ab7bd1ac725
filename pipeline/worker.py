"""The local runner's worker processes (``--direct_running_mode=
multi_processing``): Beam's SDK harness, started with the command's logging
(``pipeline/logs.py``). Ctrl-C is the command's to handle: it stops its
workers and says so once."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import sys
import threading

from pipeline import collection, logs, signals

# A worker process starts without garbage collections (pipeline/collection.py)
# for this long: importing Beam's harness and Theano and loading the
# predictor take 1-2 s here. Then what exists is frozen, once, and
# collection resumes: 20,000 digits with 2 worker processes ran a median
# 0.30 s faster with 0.5 s less CPU over 11 alternating rounds
# (bench/README.md, "Start-up").
WORKER_STARTUP_SECONDS = 5.0

# How the runner starts a worker (Beam's own: ``-m
# apache_beam.runners.worker.sdk_worker_main``); ``exec``: the worker is the
# command's child, not a shell's (:func:`stop_local_workers` finds it).
COMMAND = f"exec {shlex.quote(sys.executable)} -m pipeline.worker"
_MODULE = b"pipeline.worker"


def local_runner(**kwargs):
    """Beam's in-process ``FnApiRunner`` whose worker processes, if any,
    start with :data:`COMMAND`."""
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.transforms import environments

    class FnApiRunner(fn_runner.FnApiRunner):  # the name runs report
        @property
        def _default_environment(self):
            return self._environment

        @_default_environment.setter
        def _default_environment(self, environment):
            if isinstance(environment,
                          environments.SubprocessSDKEnvironment):
                environment = environments.SubprocessSDKEnvironment \
                    .from_command_string(COMMAND)
            self._environment = environment

    return FnApiRunner(**kwargs)


# How long a worker that got Ctrl-C or SIGTERM waits for the command to stop
# it before it exits by itself.
STOP_GRACE_SECONDS = 5.0


_stop_timer: list[threading.Timer] = []
_stop_lock = threading.Lock()
# The write end of the wakeup socket (see _watch_stop_signals), kept open.
_wakeup: list = []


def _exit_unless_stopped(signum, frame) -> None:
    """A terminal sends Ctrl-C to every process of the job: the command
    stops its workers. One it fails to stop (Beam's runner can miss a worker
    that was still starting, then waits on it forever) exits by itself
    after :data:`STOP_GRACE_SECONDS`."""
    logs.stopped()  # the command says it once; Beam prints tracebacks of
    # the bundles the stop cuts short to stderr itself
    with _stop_lock:
        if _stop_timer:  # a second signal (Ctrl-C, then the command's SIGTERM)
            return
        _stop_timer.append(threading.Timer(STOP_GRACE_SECONDS, os._exit,
                                           (128 + signum,)))
        _stop_timer[0].daemon = True
        _stop_timer[0].start()


def _watch_stop_signals() -> None:
    """Acts on SIGINT and SIGTERM whichever thread the kernel delivers them
    to. Python runs a handler in the main thread only, when it next runs
    Python code; a signal delivered to one of gRPC's threads while the main
    thread waits without a timeout (Beam's harness waits so for its
    channels) would never be acted on. Python's C handler also writes the
    signal's number to the wakeup socket, from any thread; a thread of our
    own reads it."""
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, _exit_unless_stopped)
    readable, writable = socket.socketpair()
    writable.setblocking(False)
    signal.set_wakeup_fd(writable.fileno(), warn_on_full_buffer=False)
    _wakeup.append(writable)

    def watch():
        while signals := readable.recv(64):
            for signum in signals:
                if signum in (signal.SIGINT, signal.SIGTERM):
                    _exit_unless_stopped(signum, None)

    threading.Thread(target=watch, name="imgclass-stop", daemon=True).start()


def _collect_after_startup(seconds: float) -> None:
    """No garbage collections for the worker's first ``seconds`` (its
    start-up has no moment the harness tells: a timer ends it)."""
    collection.pause()
    resume = threading.Timer(seconds, collection.resume)
    resume.daemon = True
    resume.start()


def stop_local_workers() -> None:
    """Sends SIGTERM to this process's worker processes, which then exit
    within :data:`STOP_GRACE_SECONDS` unless the runner stops them first:
    the command's stop (a SIGTERM sent to it alone, as a scheduler does)
    reaches workers Beam's runner would otherwise wait on forever. Linux
    only (``/proc``); elsewhere a terminal's Ctrl-C reaches them itself."""
    for pid in _children(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read().split(b"\0")
            if _MODULE in command:
                os.kill(pid, signal.SIGTERM)
        except OSError:  # gone meanwhile
            continue


def _children(parent: int) -> list[int]:
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    # "pid (name) state ppid ...": the name may hold spaces
                    fields = handle.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == parent:
                found.append(int(entry))
    return found


def main(argv) -> int:
    _collect_after_startup(WORKER_STARTUP_SECONDS)
    _watch_stop_signals()
    logs.configure()
    from apache_beam.runners.worker import sdk_worker_main

    try:
        sdk_worker_main.main(argv)
    except Exception as error:  # noqa: BLE001
        if logs.is_stop(error):  # the command is gone: it has said why
            return 1
        raise
    return 0


if __name__ == "__main__":
    signals.exit_process(main(sys.argv), ignore_stops=False)
