"""What the terminal shows while a run's pipeline runs on this machine.

The pipeline writes how many files it matched, and how many of them it is
going to classify, to the run's staging folder as soon as matching ends
(``outputs.RunOutputs.matched_count_path`` / ``todo_count_path``); each
worker process writes how many files it finished to a local folder
(``transforms.progress``), which needs the workers on this machine: the
in-process and multi-processing runners.
:class:`Monitor` reads them from a thread of the driver and prints:

    imgclass: matched 20000 files
    imgclass: progress: 8192 / 20000 images (41%), 1650 images/s, ETA 7s

Rates count from when the first files were done (not from the workers'
start-up, which would make early ETAs far too long).
Beam's own metrics cannot serve here: the in-process runner reports them
only when the pipeline has finished.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from model_store import fs
from transforms.progress import read_done


class Monitor:
    """Reports a run's progress every ``every`` seconds (the matched count
    within a second of matching ending) while used as a context manager.

    Args:
        paths: the run's ``outputs.RunOutputs``.
        folder: the local folder the workers write their counts to.
        every: seconds between progress lines.
        log: where lines go.
        clock: ``time.monotonic`` (tests inject their own and call
            :meth:`tick` themselves).
    """

    def __init__(self, paths, folder: str, *, every: float, log,
                 clock: Callable[[], float] = time.monotonic):
        self._paths = paths
        self._folder = folder
        self._every = every
        self._log = log
        self._clock = clock
        self._last = clock()
        self._first = None  # (time, files done) when files were first done
        self._printed = 0  # files done in the last line printed
        self._matched: Optional[int] = None
        self._todo: Optional[int] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "Monitor":
        """Starts reporting from a thread."""
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="imgclass-progress")
        self._thread.start()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        """Stops the thread; when the pipeline succeeded, says what was
        matched if it was not said yet."""
        self._stop.set()
        self._thread.join()
        if kind is None:
            self._announce()

    def _loop(self) -> None:
        while not self._stop.wait(min(1.0, self._every)):
            self.tick()

    def tick(self) -> None:
        """One look: the matched line once known, a progress line when
        ``every`` seconds have passed since the last and more files are
        done."""
        self._announce()
        now = self._clock()
        done = read_done(self._folder)
        if done and self._first is None:
            self._first = (now, done)
        if now - self._last < self._every or done == self._printed:
            return
        self._last, self._printed = now, done
        line = f"imgclass: progress: {done}"
        if self._todo:
            line += f" / {self._todo} images ({100 * done / self._todo:.0f}%)"
        else:
            line += " images"
        since, then = self._first
        if now > since and done > then:
            rate = (done - then) / (now - since)
            line += f", {rate:.0f} images/s"
            if self._todo:
                left = max(self._todo - done, 0)
                line += f", ETA {_duration(left / rate)}"
        print(line, file=self._log, flush=True)

    def _announce(self) -> None:
        if self._todo is not None:
            return
        try:
            if self._matched is None:
                self._matched = self._paths.matched_count()
            if self._matched is not None:
                self._todo = self._paths.todo_count()
        except Exception as error:
            if not fs.is_store_error(error):
                raise
            return  # the store failed this look: the next one retries
        if self._todo is None:
            return
        line = f"imgclass: matched {self._matched} files"
        if self._todo != self._matched:
            line += f", {self._todo} to classify"
        print(line, file=self._log, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
