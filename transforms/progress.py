"""Progress of a run, counted where files finish (decode errors, predict).

Each worker process counts the files of the run it finished (predicted or
failed; :func:`add`), one counter per run, so that a new run (a ``watch``
window) starts again from zero.

* With a progress folder (local runners: the in-process and
  multi-processing workers share the driver's disk), each process writes
  its count to ``<folder>/<pid>.json`` at most every ``FLUSH_SECONDS``; the
  driver adds them up (:func:`read_done`) and prints done / total, %,
  images/s and ETA (``pipeline/progress.py``).
* Without one (remote runners), each worker prints its own count and rate
  every ``IMGCLASS_PROGRESS_SECONDS``, to the worker logs.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
import uuid
from typing import Callable, Optional

from model_store.errors import ConfigError

# How often progress is reported, in seconds (default 10); 0 turns it off.
PROGRESS_ENV = "IMGCLASS_PROGRESS_SECONDS"
DEFAULT_PROGRESS_SECONDS = 10.0
# How often a worker process writes its count to the progress folder.
FLUSH_SECONDS = 1.0


def progress_seconds() -> float:
    """``$IMGCLASS_PROGRESS_SECONDS``, else the default; 0 means off. A
    value that is not a number of seconds >= 0 is a ConfigError (the
    command checks it before any work)."""
    text = os.environ.get(PROGRESS_ENV) or None  # empty: unset
    try:
        seconds = DEFAULT_PROGRESS_SECONDS if text is None else float(text)
    except ValueError:
        seconds = math.nan
    if not seconds >= 0:
        raise ConfigError(f"{PROGRESS_ENV}={text!r} is not a number of "
                          f"seconds >= 0: set it to the seconds between "
                          f"progress lines (0: none), or unset it")
    return seconds


class Counter:
    """Files one process finished for one run.

    Args:
        folder: the run's progress folder, or None (print per worker).
        clock: ``time.monotonic`` (tests inject their own).
        every: seconds between per-worker lines (no folder); 0: never.
        log: where per-worker lines go.
    """

    def __init__(self, folder: Optional[str], *,
                 clock: Callable[[], float] = time.monotonic,
                 every: Optional[float] = None, log=None):
        self.folder = folder
        self.clock = clock
        self.every = progress_seconds() if every is None else every
        self.log = log
        self.lock = threading.Lock()
        self.done = 0
        self.started = self.last = None
        self.dirty = False  # counted but not yet written

    def flush(self) -> None:
        """Writes the count if it changed since it was last written (at the
        end of a bundle: the last files of a worker are not left out)."""
        with self.lock:
            if self.folder is not None and self.dirty:
                self.last = self.clock()
                self._write()

    def add(self, count: int) -> None:
        with self.lock:
            _in_process[0] += count
            now = self.clock()
            if self.started is None:  # count from the first files done, not
                self.started = self.last = now  # from compiling the model
                if self.folder is not None:
                    self.last = now - FLUSH_SECONDS  # write the first at once
            self.done += count
            if self.folder is not None:
                self.dirty = True
                if now - self.last >= FLUSH_SECONDS:
                    self.last = now
                    self._write()
            elif 0 < self.every <= now - self.last:
                self.last = now
                # print, not logging: worker processes of the local
                # multi-processing runner share the terminal's stderr.
                print(f"imgclass: progress: {self.done} images done by "
                      f"worker {os.getpid()}, "
                      f"{self.done / (now - self.started):.0f} images/s",
                      file=self.log or sys.stderr, flush=True)

    def _write(self) -> None:
        """This process's count, written aside and renamed into place."""
        self.dirty = False
        path = os.path.join(self.folder, f"{os.getpid()}.json")
        aside = f"{path}.{uuid.uuid4().hex}.tmp"
        try:
            os.makedirs(self.folder, exist_ok=True)
            with open(aside, "w") as handle:
                json.dump({"done": self.done}, handle)
            os.replace(aside, path)
        except OSError:  # progress is best effort; the counts are not
            pass


_lock = threading.Lock()
_current: dict = {}
_in_process = [0]  # files done in this process, every run


def done_in_process() -> int:
    """Files this process finished, over all its runs."""
    return _in_process[0]


def counter(run_id: str, folder: Optional[str]) -> Counter:
    """This process's counter for the run ``run_id`` (a new one, from zero,
    when the run changes)."""
    with _lock:
        if _current.get("run") != (run_id, folder):
            _current.update(run=(run_id, folder), counter=Counter(folder))
        return _current["counter"]


def read_done(folder: str) -> int:
    """Files done so far, over every worker process of the run."""
    done = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        if name.endswith(".json"):
            try:
                with open(os.path.join(folder, name)) as handle:
                    done += int(json.load(handle)["done"])
            except (OSError, ValueError, KeyError, TypeError):
                pass  # replaced meanwhile: the next look has it
    return done
