"""``imgclass watch``: classify image files as they arrive in a folder.

Beam 2.77 has no local runner that runs an unbounded pipeline offline (the
DirectRunner downloads Prism; the in-process FnApiRunner runs
``fileio.MatchContinuously`` as a batch job; the BundleBasedDirectRunner
fails on its splittable DoFns). So the watcher is a loop around the bounded
pipeline, with the same output contract:

* Time is cut into fixed windows of ``window`` seconds (UTC, aligned, a
  divisor of one hour). While a window is open, the watcher looks at the
  inputs every ``interval`` seconds and reports new files. When it ends, one
  incremental run (``run_classify`` with ``skip_done=True``) classifies every
  settled file no earlier run did, and publishes one set of Parquet files to
  ``predictions/date=YYYY-MM-DD/hour=HH/`` and ``errors/...`` (the hour the
  window starts in). The ledger makes each file classified once; staging and
  roll-forward publishing make a window visible whole or not at all.
* A file counts as settled when its name does not mark it as in progress
  (``.name``, ``*.tmp``, ``*.part``, ``*.partial``, ``*.crdownload``) and it
  was last modified at least ``settle`` seconds ago
  (``transforms.read.is_settled``). Other files wait for a later window.
  A file modified in the future (a skewed clock) settles once unchanged
  for ``settle`` seconds of the watcher's clock since it first saw it so,
  and the watcher warns once (``_FutureFiles``); the window's run is given
  those files (``settled_files``), as its own filter would leave them out.
* Inputs that match no file are not refused (a watched folder may start
  empty; ``classify`` needs ``--allow-empty`` for that); the watcher says
  so when it starts.
* After a window is published, ``_windows/<start>.json`` records it (run id,
  counts; no run when there was nothing new). Windows never overlap:
  after a restart with longer windows, or a clock set back, the next
  window begins where the last published one ended (``_window_after``).
  When no later window can write into an hour partition any more,
  ``_SUCCESS`` is written into
  ``predictions/date=.../hour=.../`` and ``errors/date=.../hour=.../``
  (a run that failed part way through publishing is completed by the
  next one, into its window's hour: that hour waits for it).
* Stopping (``stop_event``; the command line sets it on Ctrl-C or SIGTERM)
  finishes the window being published, if any, and leaves the open window
  unpublished: its files are classified by the next run. A second signal
  aborts the run in progress, which publishes nothing.

Each window's run builds the pipeline again and loads the model again; the
Theano modules come from the on-disk compile cache, so a run costs a few
seconds on top of its images. This is why windows are published at most
once per window, not once per ``interval``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import json
import math
import os
import signal
import sys
import threading
import time
from typing import Callable, Optional

from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.filesystems import FileSystems

from model_store import fs
from model_store.errors import ConfigError
from pipeline import collection, inputs, layout, outputs, worker
from pipeline.done_files import DoneFiles
from pipeline.run import (
    ClassifyConfig,
    RunFailed,
    failing_on_store_errors,
    make_runner,
    merge_ledger,
    pipeline_options,
    recover,
    run_classify,
    validate,
)
from transforms.defaults import (
    DEFAULT_INTERVAL,
    DEFAULT_SETTLE,
    DEFAULT_WINDOW,
    check_batch_size,
    top_k_for,
)
from transforms.files import list_identified
from transforms.read import (
    file_version,
    is_settled,
    modified_in_future,
    one_per_file,
)
from transforms.skip import file_key

HOUR = 3600
# A run that fails is retried at the end of the next window; after this many
# failures in a row the watcher gives up (exit code 1).
MAX_FAILURES = 3


@dataclasses.dataclass(frozen=True)
class Window:
    """``[start, start + seconds)``, in Unix seconds (UTC)."""
    start: int
    seconds: int

    @property
    def end(self) -> int:
        return self.start + self.seconds

    @property
    def partition(self) -> str:
        return hour_partition(self.start)

    @property
    def marker_name(self) -> str:
        return f"{_utc(self.start):%Y%m%dT%H%M%SZ}.json"

    def as_dict(self) -> dict:
        return {"start": _iso(self.start), "end": _iso(self.end),
                "seconds": self.seconds}

    def __str__(self) -> str:
        return f"{_utc(self.start):%Y-%m-%d %H:%M:%S}-{_utc(self.end):%H:%M:%S}Z"


def window_at(t: float, seconds: int) -> Window:
    """The window that holds the instant ``t``."""
    return Window(int(t // seconds) * seconds, seconds)


def hour_partition(t: float) -> str:
    return f"date={_utc(t):%Y-%m-%d}/hour={_utc(t):%H}"


def check_settings(interval: float, window: float, settle: float) -> int:
    """Refuses bad timings in one line; returns the window in seconds."""
    for name, value in (("interval", interval), ("window", window),
                        ("settle", settle)):
        if not math.isfinite(value):
            raise ConfigError(f"--{name} must be a finite number of "
                              f"seconds, got {value!r}")
    if not interval > 0:
        raise ConfigError(f"--interval must be > 0 seconds, got {interval!r}")
    if not settle >= 0:
        raise ConfigError(f"--settle must be >= 0 seconds, got {settle!r}")
    if not (window == int(window) and 1 <= window <= HOUR
            and HOUR % int(window) == 0):
        raise ConfigError(f"--window must be a whole number of seconds that "
                          f"divides 3600 (e.g. 60, 300, 900, 3600), got "
                          f"{window!r}")
    return int(window)


def watch(config: ClassifyConfig, *, interval: float = DEFAULT_INTERVAL,
          window: float = DEFAULT_WINDOW, settle: float = DEFAULT_SETTLE,
          stop_event: Optional[threading.Event] = None,
          log=sys.stderr, clock: Callable[[], float] = time.time,
          wait: Optional[Callable[[float], bool]] = None) -> dict:
    """Watches ``config.inputs`` until ``stop_event`` is set; returns counts
    ``{"windows", "runs", "predicted", "failed", "failed_runs"}``.

    ``clock`` (Unix seconds) tells the windows and the settle cut-off;
    ``wait(seconds)`` pauses between looks at the inputs, returning early
    once stopped (default: ``stop_event.wait``). Tests inject both.

    ``config`` is what ``classify`` takes (inputs, output, model_ref, store,
    top_k, batch_size, max_pixels, beam_args); its partitioning, overwrite
    and skip-done settings are the watcher's own.

    Raises:
        ConfigError (and other ImgclassError): a mistake found before
            watching starts, or the output is in use by another run or
            watcher (its lock, ``outputs.locked``).
        RunFailed: MAX_FAILURES window runs failed in a row.
    """
    seconds = check_settings(interval, window, settle)
    stop = stop_event if stop_event is not None else threading.Event()
    wait = stop.wait if wait is None else wait
    base = _window_config(config, settle)
    # A watcher refused before watching leaves no folder behind.
    with outputs.removed_unless_used(config.output):
        return _watch_output(config, base, interval, seconds, settle, stop,
                             wait, log, clock)


def _watch_output(config, base, interval, seconds, settle, stop, wait, log,
                  clock) -> dict:
    """watch's work, once its settings are checked."""
    base, patterns, _ = validate(base)
    with failing_on_store_errors(base.output, _RESTART), \
            outputs.locked(base.output, f"watch-{os.getpid()}", log=log):
        recover(base.output, log)
        # Judged on the output as recovery left it, before any work.
        _check_layout(base.output)
        layout.check(base.output, layout.layout_of(hour_partition(0)),
                     base.table_format)
        outputs.check_done_files(base.output, reader="watch",
                                 remedy="watch into another output folder")
        merge_ledger(base.output, log)
        base, stored = _with_model(base)
        current = _resume(base.output, seconds, clock, log)
        watcher = _Watcher(base, patterns, stored, log=log, clock=clock)
        _announce(config, base.output, stored, interval, settle, seconds, log)
        collection.resume()  # start-up is over (pipeline.collection)
        while not stop.is_set():
            if clock() < current.end:
                watcher.report_new(current)
                wait(max(0.01, min(interval, current.end - clock())))
                continue
            if not watcher.publish(current, stopping=stop):
                break
            current = _next_window(base.output, current, seconds, clock(),
                                   log, complete=watcher.unfinished is None)
        print(f"imgclass: stopped; window {current} was not published: its "
              f"files wait for the next run", file=log)
    return watcher.counts


_RESTART = ("the windows published stay; start the watcher again once that "
            "is fixed (it completes what this one left)")


def _window_config(config: ClassifyConfig, settle: float) -> ClassifyConfig:
    """The configuration of every window's run (checks the Beam options);
    its model is resolved by :func:`_with_model`."""
    make_runner(pipeline_options(config.beam_args))  # bad options, now
    return dataclasses.replace(
        config, partition_by="none", run_date=None, overwrite=False,
        skip_done=True, partition=None, settle=float(settle), window=None,
        allow_empty=True)


def _with_model(base: ClassifyConfig) -> tuple[ClassifyConfig, object]:
    """Loads the model once and checks ``top_k`` and the batch size against
    it; ``(base with the model resolved, the StoredModel)``."""
    from model_store.store import load_model, looks_like_path

    stored = load_model(base.model_ref, root=base.store)
    check_batch_size(base.batch_size, stored.preprocessing.input_shape,
                     stored.ref)
    # "latest" is resolved once: every window uses the same version, and the
    # ledger check is for that version (restart to change models).
    base = dataclasses.replace(
        base,
        model_ref=(base.model_ref if looks_like_path(base.model_ref)
                   else stored.ref),
        top_k=top_k_for(base.top_k, len(stored.class_names), stored.ref))
    return base, stored


def _resume(output: str, seconds: int, clock, log) -> Window:
    """Finishes what an earlier watcher left (markers, ``_SUCCESS``; the
    caller completed interrupted publishing); the first window to publish:
    the one open now, begun where the last published window ended when
    that is later (an earlier watcher with longer windows, or a clock set
    back), so that no window is published twice under one marker."""
    now = clock()
    recorded = _recorded_windows(output, now)
    last = max(recorded, key=lambda w: w.start, default=None)
    current = window_at(now, seconds) if last is None else \
        _window_after(last, now, seconds)
    if last is not None and now < last.end:
        _say_clock_went_back(now, last, current, log)
    _complete_their_hours(output, recorded, current)
    return current


def _announce(config: ClassifyConfig, output: str, stored, interval: float,
              settle: float, seconds: int, log) -> None:
    # A watched folder may well start empty: not a mistake, but say so
    # (a typo in a glob would otherwise wait forever, silently).
    for path in inputs.unmatched(config.inputs, output):
        print(f"imgclass: input {path!r} matches no file yet", file=log)
    print(f"imgclass: watching {', '.join(config.inputs)} every "
          f"{interval:g}s with {stored.ref}; files settle for {settle:g}s; "
          f"{seconds}s windows go to {output}/predictions/"
          f"date=.../hour=...; Ctrl-C or SIGTERM stops", file=log)


def _next_window(output: str, ended: Window, seconds: int, now: float,
                 log, *, complete: bool = True) -> Window:
    """The window of ``seconds`` open at ``now``, once ``ended`` is
    published (or the one after ``ended``, if the clock was set back);
    completes the hours no later window writes into (unless not
    ``complete``: a run's publishing is yet to be completed)."""
    following = _window_after(ended, now, seconds)
    if now < ended.end:
        _say_clock_went_back(now, ended, following, log)
    elif following.start > ended.end:
        print(f"imgclass: the run took longer than the window; new "
              f"files go to window {following}", file=log)
    if complete:
        _complete_hours(output, ended.start, following.start)
    return following


class _Watcher:
    """What a watch keeps between windows: the files done with its model
    version (from the ledger), the counts, the failures in a row."""

    def __init__(self, config: ClassifyConfig, patterns, stored, *, log,
                 clock):
        self.config, self.patterns, self.stored = config, patterns, stored
        self.log, self.clock = log, clock
        self.done = DoneFiles()
        self.done.add_ledger(outputs.ledger_files(config.output), stored)
        self.counts = {"windows": 0, "runs": 0, "predicted": 0, "failed": 0,
                       "failed_runs": 0}
        self.failures = 0
        # The start of the first window whose run failed part way through
        # publishing: the run that completes it writes into its hour, which
        # is not final until then.
        self.unfinished: Optional[int] = None
        self._waiting = 0
        self.future = _FutureFiles(log)

    def report_new(self, window: Window) -> None:
        """Says how many new files wait for ``window``, when it changes."""
        new = _new_files(self.patterns, self.config.settle, self.done,
                         inputs.excluded(self.config.output), self.clock(),
                         self.future)
        if len(new) != self._waiting:
            self._waiting = len(new)
            if self._waiting:
                print(f"imgclass: {self._waiting} new file(s), published "
                      f"when window {window} ends", file=self.log)

    def publish(self, window: Window, *, stopping: threading.Event) -> bool:
        """Publishes ``window`` and counts it; False when the watch stops
        (a failed run while stopping).

        Raises:
            RunFailed: the MAX_FAILURES-th failed run in a row.
        """
        self._waiting = 0
        try:
            manifest = _publish_window(self.config, self.patterns, window,
                                       self.done, self.stored, self.log,
                                       self.clock, self.future)
        except RunFailed as error:
            return self._failed(window, error, stopping)
        if self.failures:  # this run may have completed a failed one's
            self.done.clear()  # publishing: its files are done too
            self.done.add_ledger(outputs.ledger_files(self.config.output),
                                 self.stored)
            _mark_runs(self.config.output, self.failures + 1, self.clock())
        if self.unfinished is not None and not outputs.pending_publishes(
                self.config.output):  # this window's run completed it
            _complete_hours(self.config.output, self.unfinished, window.start)
            self.unfinished = None
        self.failures = 0
        self.counts["windows"] += 1
        if manifest is not None and manifest["deferred_signals"] and \
                not stopping.is_set():  # held back while publishing
            stopping.set()
            print(STOPPING, file=self.log)
        self._count_run(manifest)
        return True

    def _failed(self, window: Window, error: RunFailed,
                stopping: threading.Event) -> bool:
        """:meth:`publish` for a window that failed: says what became of
        it; False when the watch stops; the error again on the
        MAX_FAILURES-th failure in a row."""
        unmarked = error.manifest if isinstance(error, _UnmarkedWindow) \
            else None
        self._count_run(unmarked)
        what = (f"was published (run {unmarked['run_id']}) but not marked"
                if unmarked else "was not published")
        if stopping.is_set():
            print(f"imgclass: window {window} {what} (stopping): {error}",
                  file=self.log)
            return False
        self.failures += 1
        self.counts["failed_runs"] += 1
        if self.unfinished is None and outputs.pending_publishes(
                self.config.output):
            self.unfinished = window.start
        then = ("the next window that publishes marks it" if unmarked
                else "its files wait for the next window")
        print(f"imgclass: window {window} {what}, {then} "
              f"({self.failures}/{MAX_FAILURES} failures in a row): "
              f"{error}", file=self.log)
        if self.failures >= MAX_FAILURES:
            raise error
        return True

    def _count_run(self, manifest: Optional[dict]) -> None:
        if manifest is not None:
            self.counts["runs"] += 1
            self.counts["predicted"] += manifest["counts"]["predicted"]
            self.counts["failed"] += manifest["counts"]["failed"]


class _UnmarkedWindow(RunFailed):
    """A window's run is published, but its marker could not be written
    (a store error): the window counts as failed, so that the next one
    that publishes writes the marker (:func:`_mark_runs`)."""

    def __init__(self, message: str, manifest: dict):
        super().__init__(message)
        self.manifest = manifest


def _window_after(ended: Window, now: float, seconds: int) -> Window:
    """The window of ``seconds`` open at ``now``, begun no earlier than
    ``ended`` ends: a clock set back, or windows longer than ``ended``'s,
    would otherwise publish a window again under the same marker. Begun
    at ``ended.end`` inside a longer window, it ends where that one does."""
    following = window_at(max(now, ended.end), seconds)
    if following.start < ended.end:
        following = Window(ended.end, following.end - ended.end)
    return following


def _say_clock_went_back(now: float, published: Window, following: Window,
                         log) -> None:
    print(f"imgclass: warning: the clock reads {_iso(now)}, before the end "
          f"of window {published}, published already (was the clock set "
          f"back?); new files go to window {following}", file=log)


def _publish_window(config: ClassifyConfig, patterns, window: Window,
                    done: DoneFiles, stored, log, clock,
                    future: _FutureFiles) -> Optional[dict]:
    """Publishes the window that just ended (one run, or none when nothing
    is new), then its marker; returns the run's manifest or None."""
    with failing_on_store_errors(config.output,
                                 "its files wait for the next window"):
        return _run_window(config, patterns, window, done, stored, log,
                           clock, future)


def _run_window(config, patterns, window, done, stored, log, clock,
                future):
    """:func:`_publish_window`'s work."""
    output = config.output
    now = clock()
    new = _new_files(patterns, config.settle, done,
                     inputs.excluded(output), now, future)
    manifest = None
    present = _present_inputs(config.inputs, log)
    if present and (new or not outputs.holds_earlier_run(output)):
        # The run's own filter (is_settled) would leave these out.
        early = tuple(file_version(m) for m in new
                      if not is_settled(m, config.settle, now))
        manifest = _classify_window(dataclasses.replace(
            config, inputs=present, partition=window.partition,
            window=window.as_dict(), listed_at=now, settled_files=early),
            window, log, clock)
        done.add_ledger(manifest["files"].get(outputs.LEDGER_DIR, []),
                        stored)
    else:
        print(f"imgclass: window {window}: no new files", file=log)
    _mark_window(output, window, manifest, clock())
    return manifest


def _classify_window(run: ClassifyConfig, window: Window, log, clock) -> dict:
    """The window's run (``run_classify``); its manifest."""
    try:
        return run_classify(run, log=log, output_locked=True)
    except ConfigError as error:
        # Found by the run's own checks since the watcher started (a
        # disk full, an output no longer writable): a failed window.
        raise RunFailed(str(error)) from error
    except BaseException as error:
        if not isinstance(error, Exception):
            # A second Ctrl-C or SIGTERM: a run that had started
            # publishing is finished, any other leaves nothing behind.
            with contextlib.suppress(Exception):
                outputs.recover(run.output)
                _reconcile(run.output, window_at(clock(), window.seconds),
                           clock())
        raise


def _mark_window(output: str, window: Window, manifest: Optional[dict],
                 closed_at: float) -> None:
    """Writes ``window``'s marker; _UnmarkedWindow when a store error
    stops it after the window's run was published."""
    try:
        _write_marker(output, window, manifest, closed_at)
    except Exception as error:
        if manifest is None or not fs.is_store_error(error):
            raise
        raise _UnmarkedWindow(f"{fs.shown(output)}: {type(error).__name__}:"
                              f" {fs.error_line(error)}", manifest) from error


def _present_inputs(paths, log) -> list[str]:
    """The inputs that exist now: a watched folder that went away (a
    remount, a rotation) is waited for, not a reason to stop."""
    present = []
    for path in paths:
        try:
            inputs.validated_pattern(path)
        except ConfigError:
            print(f"imgclass: input {path!r} is gone; its files wait until "
                  f"it is back", file=log)
            continue
        present.append(path)
    return present


def _write_marker(output: str, window: Window, manifest: Optional[dict],
                  closed_at: float) -> None:
    # Written whole or not at all: a reader never sees half a marker.
    fs.write_atomic(
        fs.join(output, outputs.WINDOWS_DIR, window.marker_name),
        fs.json_bytes(_marker_record(window, manifest, closed_at)))


def _marker_record(window: Window, manifest: Optional[dict],
                   closed_at: float) -> dict:
    """What ``window``'s marker holds; KeyError, TypeError, ValueError or
    AttributeError when ``manifest`` lacks what it needs (damaged)."""
    counts = manifest["counts"] if manifest else {}
    return {"window": window.as_dict(), "partition": window.partition,
            "run_id": manifest["run_id"] if manifest else None,
            "counts": {"predicted": int(counts.get("predicted", 0)),
                       "failed": int(counts.get("failed", 0))},
            "closed_at": _iso(closed_at)}


def _complete_hours(output: str, since: float, until: float) -> None:
    """``_SUCCESS`` in every hour partition from the one holding ``since``
    that ends at or before ``until`` (no later window writes into it)."""
    hour = int(since // HOUR) * HOUR
    while hour + HOUR <= until:
        for kind in outputs.PARTITIONED:
            path = fs.join(output, kind, *hour_partition(hour).split("/"),
                                outputs.SUCCESS)
            if not FileSystems.exists(path):
                fs.create(path, b"")
        hour += HOUR


def _reconcile(output: str, current: Window, now: float) -> None:
    """Writes the markers an earlier watcher could not (killed between
    publishing a run and marking its window, or stopped in an hour that has
    ended since); ``now`` is when, for the markers."""
    _complete_their_hours(output, _recorded_windows(output, now), current)


def _recorded_windows(output: str, now: float) -> set[Window]:
    """The last run's window (its marker written now if an earlier watcher
    could not) and the last marker's: the latest published windows. The
    run's may lie in an earlier hour (a run whose publishing recovery has
    just completed, after a later window with no run)."""
    recorded = set(_mark_runs(output, 1, now))
    last = _last_window(output)
    return recorded | {last} if last is not None else recorded


def _complete_their_hours(output: str, windows, current: Window) -> None:
    """``_SUCCESS`` in the hour of each of ``windows`` (published), once the
    ``current`` one starts after it."""
    for window in windows:
        hour = int(window.start // HOUR) * HOUR
        _complete_hours(output, hour, min(current.start, hour + HOUR))


def _last_window(output: str) -> Optional[Window]:
    """The latest window a marker records (names sort by start), or None."""
    markers = fs.match(fs.join(output, outputs.WINDOWS_DIR, "*.json"))
    return _read_record(output, markers[-1], marker=True)[1] if markers \
        else None


def _read_record(output: str, path: str, *, marker: bool = False
                 ) -> tuple[dict, Optional[Window]]:
    """A run's manifest or (``marker``) a window's marker, and the
    :class:`Window` it records (``Window.as_dict``; None for a run of no
    window: a marker always has one); ConfigError, before any work, when it
    is damaged."""
    try:
        record = json.loads(fs.read_bytes(path))
        spec = record.get("window")
        if not spec and not marker:
            return record, None
        start = datetime.datetime.fromisoformat(spec["start"]).timestamp()
        window = Window(int(start), int(spec["seconds"]))
        if not marker:  # a run's window may need its marker written
            _marker_record(window, record, 0)
        return record, window
    except (ValueError, TypeError, KeyError, AttributeError,
            fs.NotRegularError) as error:
        raise ConfigError(
            f"output {output!r}: {fs.one_line(fs.printable(path))} is "
            f"damaged ({fs.error_line(error)}), so watch cannot tell which "
            f"windows were published; restore it from a backup, or watch "
            f"into another output folder") from None


def _mark_runs(output: str, last: int, now: float) -> list[Window]:
    """Writes the markers the ``last`` published runs' windows lack (a run
    published by the recovery of a later one never wrote its own); those
    runs' windows."""
    runs = fs.match(fs.join(output, outputs.RUNS_DIR, "*.json"))
    windows = []
    for path in runs[-last:]:  # run ids sort by time
        manifest, window = _read_record(output, path)
        if window is not None:
            windows.append(window)
            if not FileSystems.exists(fs.join(
                    output, outputs.WINDOWS_DIR, window.marker_name)):
                _write_marker(output, window, manifest, now)
    return windows


def _new_files(patterns, settle: float, done: DoneFiles, exclude,
               now: float, future: _FutureFiles) -> list[FileMetadata]:
    """Files settled at ``now`` (or by ``future``) that no published run
    classified with this model, by path."""
    by_file = collections.defaultdict(list)
    for pattern in patterns:  # what cannot be listed, the run reports
        for real, item in list_identified(pattern, exclude=exclude):
            by_file[real].append(item)
    listed = []
    for real, items in by_file.items():  # as the run will list them
        m = one_per_file(real, items)
        if isinstance(m, FileMetadata):
            listed.append(m)
    new = done.new(listed)
    settled = [m for m in new if is_settled(m, settle, now)]
    settled += future.settled(
        [m for m in new if modified_in_future(m, now)], settle, now)
    return sorted(settled, key=lambda m: m.path)


class _FutureFiles:
    """The files modified in the future a watcher sees (a camera or server
    with a skewed clock, ``cp -p`` from one): :func:`is_settled` would not
    hold for them until the clock passes that time, maybe a year. Each
    settles once unchanged (size and time) for ``settle`` seconds of the
    watcher's clock since it was first seen so; the watcher says so once."""

    def __init__(self, log):
        self._log = log
        # path -> ((size, mtime), first seen so at, said); only the files
        # the last look found modified in the future, and not done.
        self._seen: dict[str, tuple] = {}

    def settled(self, files, settle: float, now: float) -> list:
        """Those of ``files`` (new, modified after ``now``) that settled."""
        seen, ready = {}, []
        for m in files:
            key = file_key(m)
            was = self._seen.get(m.path)
            since = was[1] if was and was[0] == key else now
            said = bool(was and was[2])
            if now - since >= settle:
                ready.append(m)
                if not said:
                    self._say(m.path, key[1], settle)
                    said = True
            seen[m.path] = (key, since, said)
        self._seen = seen
        return ready

    def _say(self, path: str, mtime: float, settle: float) -> None:
        try:
            when = _iso(mtime)
        except (OverflowError, OSError, ValueError):  # after the year 9999
            when = f"{mtime:.0f}s after 1970"
        print(f"imgclass: warning: {fs.shown(path)} was modified in the "
              f"future (mtime {when}); read once unchanged for {settle:g}s "
              f"of this watcher's clock", file=self._log)


def _check_layout(output: str) -> None:
    """The watcher's partitions are date=/hour=; refuse an output that
    holds ``classify`` results laid out otherwise (readers would mix)."""
    for kind in outputs.PARTITIONED:
        for pattern in ("*.parquet", "*/*.parquet"):
            found = fs.match(fs.join(output, kind, pattern))
            if found:
                raise ConfigError(
                    f"output {output!r} holds results that are not in "
                    f"date=/hour= partitions (e.g. {found[0]}); give "
                    f"'imgclass watch' an output folder of its own")


STOPPING = ("imgclass: stopping after the window being published, if any "
            "(signal again to abort it)")


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, *, quiet: bool = False):
    """Ctrl-C or SIGTERM sets ``stop`` (and says so, unless ``quiet``: -q);
    a second one raises KeyboardInterrupt (aborting a run in progress,
    which publishes nothing).
    """
    def handler(signum, frame):
        if stop.is_set():
            worker.stop_local_workers()
            raise KeyboardInterrupt
        stop.set()
        if not quiet:  # a stderr that cannot be written (2>/dev/full)
            with contextlib.suppress(OSError):  # loses the note, no more
                os.write(2, f"{STOPPING}\n".encode())

    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield stop
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def _utc(t: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc)


def _iso(t: float) -> str:
    return _utc(t).isoformat(timespec="seconds")
