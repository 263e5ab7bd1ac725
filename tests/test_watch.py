"""``imgclass watch``: files dropped into a watched folder are classified
once, in windowed date=/hour= partitions; half-written files wait; stopping
leaves nothing half-published."""

import contextlib
import datetime
import glob
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest
from PIL import Image

from model_store.datasets import digit_image
from pipeline.run import ClassifyConfig
from pipeline.watch import (
    Window,
    _complete_hours,
    _iso,
    _next_window,
    _reconcile,
    _resume,
    _write_marker,
    check_settings,
    hour_partition,
    watch,
    window_at,
)
from tests.conftest import write_bad_files, write_digits
from transforms import schema

# Seconds on the watcher's (fake) clock: a test never waits for them.
INTERVAL, WINDOW, SETTLE = 10, 60, 30


def wait_for(condition, timeout=40.0, log=None, what="condition"):
    """Polls ``condition`` (the subprocess tests, whose clock is real)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    tail = log.getvalue()[-3000:] if log is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


class FakeClock:
    """The watcher's ``clock`` and ``wait``: time moves only when the test
    calls :meth:`advance`, which wakes the watcher at each instant it asked
    to wake at, and returns once the watcher waits again (it has done all
    that was due), so that the test reads finished outputs."""

    def __init__(self, start: float, stop: threading.Event):
        self._now, self._stop = float(start), stop
        self._cond = threading.Condition()
        self._wake_at = None  # while the watcher waits
        self._waits = 0  # how many times it began to wait
        self.finished = False  # the watcher returned

    def __call__(self) -> float:
        return self._now

    def wait(self, seconds: float) -> bool:
        with self._cond:
            self._wake_at = self._now + seconds
            self._waits += 1
            self._cond.notify_all()
            while self._now < self._wake_at and not self._stop.is_set():
                self._cond.wait(1.0)
            self._wake_at = None
            self._cond.notify_all()
        return self._stop.is_set()

    def advance(self, seconds: float, log=None) -> None:
        with self._cond:
            target = self._now + seconds
            while True:
                self._until(lambda: self._wake_at is not None, log)
                if self.finished or self._wake_at > target:
                    self._now = max(self._now, target)
                    return
                self._now, waits = self._wake_at, self._waits
                self._cond.notify_all()
                self._until(lambda waits=waits: self._waits > waits, log)

    def end(self) -> None:
        with self._cond:
            self.finished = True
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _until(self, condition, log, timeout=300.0):
        """Real seconds: only the watcher's own work (runs) takes them."""
        deadline = time.monotonic() + timeout
        while not (condition() or self.finished):
            if time.monotonic() > deadline:
                tail = log.getvalue()[-3000:] if log is not None else ""
                raise AssertionError(f"the watcher did not wait again\n{tail}")
            self._cond.wait(1.0)


def advance_until(clock, condition, log, what, windows=4):
    """Advances the clock a window at a time until ``condition`` holds."""
    for _ in range(windows):
        clock.advance(WINDOW, log)
        value = condition()
        if value:
            return value
    raise AssertionError(f"not after {windows} windows: {what}\n"
                         f"{log.getvalue()[-3000:]}")


def _away_from_an_hour_end(margin: float = 1200.0) -> float:
    """Now, or just after the next hour begins when less than ``margin``
    seconds of this one are left: a test's windows then stay in one hour
    (an hour's end writes its _SUCCESS markers between windows, where a
    test's write fault stopped the watcher when run at hh:59). Later than
    now only, for tests with no settling time: files written now are
    settled on the fake clock."""
    now = time.time()
    left = 3600.0 - now % 3600.0
    return now if left > margin else now + left + 60.0


@contextlib.contextmanager
def watching(folder, output, *, settle=SETTLE, window=WINDOW, start=None):
    """Runs the watcher in a thread on a fake clock (from ``start``, or
    now) until the block ends; yields ``(log, clock)``."""
    stop, failures, log = threading.Event(), [], io.StringIO()
    clock = FakeClock(time.time() if start is None else start, stop)
    config = ClassifyConfig(inputs=[str(folder)], output=str(output),
                            batch_size=16)

    def target():
        try:
            watch(config, interval=INTERVAL, window=window, settle=settle,
                  stop_event=stop, log=log, clock=clock, wait=clock.wait)
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)
        finally:
            clock.end()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield log, clock
    finally:
        stop.set()
        clock.wake()
        thread.join(60)
    assert not thread.is_alive(), "the watcher did not stop"
    assert not failures, f"{failures!r}\n{log.getvalue()[-3000:]}"


def rows(output, kind, columns=("path",)):
    """Rows where readers look (Parquet below predictions/ or errors/)."""
    files = parquet_files(output, kind)
    return [r for f in files
            for r in pq.read_table(f, columns=list(columns)).to_pylist()]


def parquet_files(output, kind):
    return sorted(glob.glob(os.path.join(str(output), kind, "**", "*.parquet"),
                            recursive=True))


def published_paths(output):
    return [r["path"] for kind in ("predictions", "errors")
            for r in rows(output, kind)]


def ledger_paths(output):
    return [r["path"] for f in glob.glob(os.path.join(str(output), "_ledger",
                                                      "*.parquet"))
            for r in pq.read_table(f, columns=["path"]).to_pylist()]


def markers(output):
    found = []
    for path in sorted(glob.glob(os.path.join(str(output), "_windows",
                                              "*.json"))):
        with open(path) as handle:
            found.append(json.load(handle))
    return found


def manifests(output):
    found = {}
    for path in glob.glob(os.path.join(str(output), "_runs", "*.json")):
        with open(path) as handle:
            manifest = json.load(handle)
        found[manifest["run_id"]] = manifest
    return found


def check_contract(output):
    """Every Parquet file readers see belongs to a committed run and sits in
    its window's date=/hour= partition; every run's window has a marker; no
    staging is left; every file is published once."""
    runs = manifests(output)
    committed = {os.path.normpath(p) for m in runs.values()
                 for kind in ("predictions", "errors")
                 for p in m["files"][kind]}
    for kind in ("predictions", "errors"):
        for path in parquet_files(output, kind):
            assert os.path.normpath(path) in committed, path
    assert committed == {os.path.normpath(p) for kind in
                         ("predictions", "errors")
                         for p in parquet_files(output, kind)}
    by_run = {m["run_id"]: m for m in markers(output) if m["run_id"]}
    for run_id, manifest in runs.items():
        marker = by_run[run_id]
        assert manifest["window"]["start"] == marker["window"]["start"]
        assert manifest["partition"] == marker["partition"]
        start = datetime.datetime.fromisoformat(
            marker["window"]["start"]).timestamp()
        assert marker["partition"] == window_at(start, WINDOW).partition
        for kind in ("predictions", "errors"):
            for path in manifest["files"][kind]:
                assert f"/{kind}/{manifest['partition']}/" in path
    assert not os.path.exists(os.path.join(str(output), "_staging"))
    paths = published_paths(output)
    assert len(paths) == len(set(paths))
    return paths


def drop_wave(tmp_path, folder, split, wave, now):
    """Writes a wave of files aside and moves it into the watched folder at
    once (as ``mv`` does), all modified at ``now``."""
    aside = tmp_path / f"aside{wave}"
    truth = write_digits(str(aside), split, 6, seed=wave)
    bad = write_bad_files(str(aside / "bad")) if wave == 2 else {}
    for dirpath, _, names in os.walk(aside):
        for name in names:
            os.utime(os.path.join(dirpath, name), (now, now))
    os.rename(aside, folder / f"wave{wave}")

    def moved(path):
        return path.replace(str(aside), str(folder / f"wave{wave}"))

    return ({moved(p): label for p, label in truth.items()},
            {moved(p): stage for p, stage in bad.items()})


def test_three_waves_are_published_within_a_window_once(tmp_path, split):
    folder, output = tmp_path / "inbox", tmp_path / "out"
    folder.mkdir()
    expected, bad = {}, {}
    with watching(folder, output) as (log, clock):
        # The first window publishes empty files that carry the schema.
        advance_until(clock, lambda: markers(output), log, "the first window")
        # An empty folder is watched (not refused), and the watcher says so.
        assert f"input {str(folder)!r} matches no file yet" in log.getvalue()
        assert pq.read_schema(parquet_files(output, "predictions")[0]).equals(
            schema.PREDICTIONS)
        for wave in range(3):
            dropped = clock()
            truth, bad = drop_wave(tmp_path, folder, split, wave, dropped)
            expected.update(truth)
            wanted = set(truth) | set(bad)
            advance_until(clock, lambda wanted=wanted: wanted <= set(published_paths(output)),
                          log, f"wave {wave}")
            run_ids = {r["run_id"] for kind in ("predictions", "errors")
                       for r in rows(output, kind, ["path", "run_id"])
                       if r["path"] in wanted}
            assert len(run_ids) == 1  # one set per window
            marker = [m for m in markers(output) if m["run_id"] in run_ids][0]
            end = datetime.datetime.fromisoformat(
                marker["window"]["end"]).timestamp()
            # Published in the first window that ends once the files settled.
            assert end <= dropped + SETTLE + WINDOW + INTERVAL + 1.0, (
                marker, dropped)
        clock.advance(3 * WINDOW, log)  # windows with nothing new add nothing

    paths = check_contract(output)
    assert sorted(paths) == sorted(set(expected) | set(bad))
    predictions = rows(output, "predictions", ["path", "label"])
    assert sorted(r["path"] for r in predictions) == sorted(expected)
    correct = sum(r["label"] == expected[r["path"]] for r in predictions)
    assert correct >= len(expected) - 2
    errors = rows(output, "errors", ["path", "stage"])
    assert {r["path"]: r["stage"] for r in errors} == bad
    assert len(manifests(output)) == 4  # the first window and three waves
    # Readers see the date and hour as columns.
    table = pq.read_table(os.path.join(str(output), "predictions"))
    assert {"date", "hour"} <= set(table.column_names)


def test_half_written_files_wait_until_complete(tmp_path, split):
    folder, output = tmp_path / "inbox", tmp_path / "out"
    folder.mkdir()
    complete = write_digits(str(folder), split, 3, nested=False)
    image = io.BytesIO()
    digit_image(split.test_images[0], 96, Image.Resampling.BICUBIC).save(
        image, "BMP")
    data = image.getvalue()
    growing = str(folder / "growing.bmp")
    renamed = str(folder / "renamed.png")
    digit_image(split.test_images[1], 32, Image.Resampling.BICUBIC).save(
        renamed + ".part", "PNG")
    old = time.time() - 600
    os.utime(renamed + ".part", (old, old))  # old, but named in progress
    written = [0]

    with watching(folder, output) as (log, clock):
        def copy(size):  # a slow copy: a few bytes now and then
            with open(growing, "ab") as handle:
                handle.write(data[written[0]:written[0] + size])
            written[0] += size
            os.utime(growing, (clock(), clock()))

        def copying(steps):  # more bytes every INTERVAL, within SETTLE
            for _ in range(steps):
                copy(16)
                clock.advance(INTERVAL, log)
                yield

        for _ in copying(4 * WINDOW // INTERVAL):
            if set(complete) <= set(published_paths(output)):
                break
        assert set(complete) <= set(published_paths(output)), log.getvalue()
        windows = len(markers(output))
        for _ in copying(2 * WINDOW // INTERVAL):
            pass
        # Windows were published while the file was being written.
        assert len(markers(output)) >= windows + 2
        assert growing not in published_paths(output)
        assert growing not in ledger_paths(output)
        assert not any(p.startswith(renamed) for p in ledger_paths(output))
        assert written[0] < len(data)
        copy(len(data) - written[0])
        os.rename(renamed + ".part", renamed)
        advance_until(clock, lambda: {growing, renamed} <= set(
            published_paths(output)), log, "the finished files")
    paths = check_contract(output)
    assert sorted(paths) == sorted([*complete, growing, renamed])
    assert {r["path"] for r in rows(output, "predictions")} == set(paths)


def start_watcher(folder, output):
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "watch", "--input",
         str(folder), "--output", str(output), "--interval", "0.2",
         "--window", "1", "--settle", "0", "--batch-size", "8"],
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []

    def read():
        for line in process.stderr:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return process, lines


def stop_mid_run(process, lines, signals):
    wait_for(lambda: any(": classifying " in line for line in lines),
             timeout=60, what="a run to start:\n" + "".join(lines))
    for _ in range(signals):
        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
    code = process.wait(60)
    return code, "".join(lines)


def test_sigterm_mid_run_leaves_nothing_half_published(tmp_path, split):
    folder, output = tmp_path / "inbox", tmp_path / "out"
    first = write_digits(str(folder / "a"), split, 40, seed=1)

    # One SIGTERM: the window being published is finished, then it stops.
    process, lines = start_watcher(folder, output)
    code, err = stop_mid_run(process, lines, signals=1)
    assert code == 0, err
    assert "stopping after the window being published" in err
    assert sorted(check_contract(output)) == sorted(first)

    # Two: the run in progress is aborted and publishes nothing.
    # Enough files that the run is still going when the second signal lands.
    second = write_digits(str(folder / "b"), split, 200, seed=2)
    process, lines = start_watcher(folder, output)
    code, err = stop_mid_run(process, lines, signals=2)
    assert code == 130, err
    assert sorted(check_contract(output)) == sorted(first)
    assert not set(second) & set(ledger_paths(output))

    # The next watcher classifies what the aborted run did not, once.
    with watching(folder, output) as (log, clock):
        advance_until(clock, lambda: set(second) <= set(
            published_paths(output)), log, "the aborted window's files")
    assert sorted(check_contract(output)) == sorted({**first, **second})


def test_settings_and_outputs_are_checked_before_watching(tmp_path, cli):
    with pytest.raises(Exception, match="divides 3600"):
        check_settings(1, 7, 0)
    with pytest.raises(Exception, match="--interval"):
        check_settings(0, 60, 0)
    folder = tmp_path / "inbox"
    folder.mkdir()
    code, _, err = cli("watch", "--input", folder, "--output",
                       tmp_path / "out", "--window", "7")
    assert code == 2 and "--window" in err
    code, _, err = cli("watch", "--input", folder, "--output",
                       tmp_path / "out", "--settle", "-1")
    assert code == 2 and "--settle" in err
    code, _, err = cli("watch", "--input", folder, "--output",
                       tmp_path / "out", "--streaming")
    assert code == 2 and "--streaming" in err
    # Refused at start, not when the first window ends (an hour later).
    code, _, err = cli("watch", "--input", folder, "--output",
                       tmp_path / "out", "--batch-size", "1000000")
    assert code == 2 and "--batch-size 1,000,000 would hold" in err
    classified = tmp_path / "classified"
    (classified / "predictions").mkdir(parents=True)
    pq.write_table(schema.PREDICTIONS.empty_table(),
                   str(classified / "predictions" / "part-x.parquet"))
    code, _, err = cli("watch", "--input", folder, "--output", classified)
    assert code == 2 and "output folder of its own" in err


def refused_in_one_line(cli, folder, output) -> str:
    """``imgclass watch`` stopping before any work (exit 2, one line on
    stderr): that line."""
    code, _, err = cli("watch", "--input", folder, "--output", output)
    assert code == 2, err
    (line,) = err.splitlines()
    return line


def test_a_damaged_ledger_stops_the_watcher_in_one_line(tmp_path, split,
                                                        cli):
    folder, output = tmp_path / "inbox", tmp_path / "out"
    write_digits(str(folder), split, 2, nested=False)
    with watching(folder, output, settle=0) as (log, clock):
        advance_until(clock, lambda: ledger_paths(output), log,
                      "the first files in the ledger")
    (ledger,) = glob.glob(str(output / "_ledger" / "**" / "*.parquet"),
                          recursive=True)
    os.truncate(ledger, 20)
    line = refused_in_one_line(cli, folder, output)
    assert f"_ledger file {ledger} is damaged" in line
    assert line.endswith("so watch cannot tell the files done before; "
                         "restore it from a backup, or watch into another "
                         "output folder")


@pytest.mark.parametrize("damage", ["truncated", "no length", "bad start",
                                    "fifo"])
@pytest.mark.parametrize("record", ["_windows", "_runs"])
def test_a_damaged_marker_or_manifest_stops_the_watcher_in_one_line(
        tmp_path, split, cli, record, damage):
    """The last window's marker and the last run's manifest tell a watcher
    where to begin: damaged, they stop it before any work (exit 2), naming
    the file, instead of a traceback."""
    folder, output = tmp_path / "inbox", tmp_path / "out"
    write_digits(str(folder), split, 2, nested=False)
    with watching(folder, output, settle=0) as (log, clock):
        advance_until(clock, lambda: markers(output), log, "a first window")
    path = sorted(glob.glob(str(output / record / "*.json")))[-1]
    good = json.loads(open(path).read())
    os.remove(path)
    if damage == "fifo":
        os.mkfifo(path)
    else:
        window = good["window"]
        broken = {"truncated": None,
                  "no length": {**good, "window": {"start": window["start"]}},
                  "bad start": {**good, "window": {**window,
                                                   "start": "soon"}}}[damage]
        with open(path, "w") as handle:
            handle.write(json.dumps(good)[:25] if broken is None
                         else json.dumps(broken))
    before = sorted(os.listdir(output / record))
    line = refused_in_one_line(cli, folder, output)
    assert f"{path} is damaged (" in line
    assert line.endswith("so watch cannot tell which windows were "
                         "published; restore it from a backup, or watch "
                         "into another output folder")
    assert sorted(os.listdir(output / record)) == before


@pytest.mark.parametrize("damage", ["no counts", "counts not a dict",
                                    "no run id"])
def test_a_damaged_manifest_whose_marker_is_missing_stops_the_watcher(
        tmp_path, split, cli, damage):
    """A watcher killed between publishing a run and marking its window
    leaves the marker to the next one, which writes it from the run's
    manifest: a manifest without the run id or the counts the marker
    copies stopped it with a traceback, not one line naming the file."""
    folder, output = tmp_path / "inbox", tmp_path / "out"
    write_digits(str(folder), split, 2, nested=False)
    with watching(folder, output, settle=0) as (log, clock):
        advance_until(clock, lambda: markers(output), log, "a first window")
    for marker in glob.glob(str(output / "_windows" / "*.json")):
        os.remove(marker)
    (path,) = glob.glob(str(output / "_runs" / "*.json"))
    manifest = json.loads(open(path).read())
    if damage == "counts not a dict":
        manifest["counts"] = None
    else:
        del manifest[{"no counts": "counts", "no run id": "run_id"}[damage]]
    with open(path, "w") as handle:
        json.dump(manifest, handle)
    line = refused_in_one_line(cli, folder, output)
    assert f"{path} is damaged (" in line
    assert "restore it from a backup, or watch into another output" in line
    assert not os.listdir(output / "_windows")


def test_hours_and_windows_are_marked(tmp_path):
    """A finished hour gets _SUCCESS in both tables; a run published by a
    watcher that was killed before marking its window gets its marker."""
    output = str(tmp_path / "out")
    start = 1_700_000_000 // 3600 * 3600
    _complete_hours(output, start + 1800, start + 3 * 3600 - 1)
    for hour in (start, start + 3600):
        for kind in ("predictions", "errors"):
            assert os.path.exists(os.path.join(
                output, kind, *hour_partition(hour).split("/"), "_SUCCESS"))
    assert not os.path.exists(os.path.join(
        output, "predictions", *hour_partition(start + 7200).split("/")))

    window = window_at(start + 3 * 3600 + 10, 60)
    os.makedirs(os.path.join(output, "_runs"))
    with open(os.path.join(output, "_runs", "20231114T230000Z-abc.json"),
              "w") as handle:
        json.dump({"run_id": "20231114T230000Z-abc", "window":
                   window.as_dict(), "counts": {"predicted": 2, "failed": 1}},
                  handle)
    _reconcile(output, window_at(start + 5 * 3600, 60), start + 5 * 3600)
    (marker,) = markers(output)
    assert (marker["run_id"], marker["counts"], marker["partition"]) == (
        "20231114T230000Z-abc", {"predicted": 2, "failed": 1},
        window.partition)
    # Its hour ended before the current window: no window will add to it.
    assert os.path.exists(os.path.join(
        output, "errors", *window.partition.split("/"), "_SUCCESS"))


def test_a_restart_with_longer_windows_begins_where_the_last_one_ended(
        tmp_path, split):
    """A watcher restarted with longer windows (or on a clock set back) in
    a window an earlier one published part of: its first window begins
    where the last published one ended, so no marker is overwritten and
    each file is published once."""
    folder, output = tmp_path / "inbox", tmp_path / "out"
    minute = int(time.time()) // WINDOW * WINDOW
    first = write_digits(str(folder / "a"), split, 6, seed=1)
    with watching(folder, output, window=1, settle=0, start=minute) as (
            log, clock):
        clock.advance(3, log)  # [minute, minute + 1) holds a run, then two
    assert set(first) <= set(published_paths(output))
    restarted = clock()
    second = write_digits(str(folder / "b"), split, 6, seed=2)
    with watching(folder, output, settle=0, start=restarted) as (log, clock):
        advance_until(clock, lambda: set(second) <= set(
            published_paths(output)), log, "the restarted watcher's window")
    assert sorted(check_contract(output)) == sorted({**first, **second})
    windows = sorted((m["window"]["start"], m["window"]["end"])
                     for m in markers(output))
    assert all(end <= following for (_, end), (following, _)
               in zip(windows, windows[1:]))
    last_short = max(end for start, end in windows
                     if start < _iso(minute + 3))
    assert (last_short, _iso(minute + WINDOW)) in windows


def test_a_clock_set_back_does_not_open_a_published_window_again(tmp_path):
    """The clock goes back during a run, or before a restart: the next
    window begins where the published one ended (the window open at the
    clock's time was published already, and its marker would be replaced),
    and the watcher says why it waits."""
    output, log = str(tmp_path / "out"), io.StringIO()
    published = window_at(1_800_000_000, WINDOW)
    back = published.start - 10  # a step back of a window and more
    following = _next_window(output, published, WINDOW, back, log)
    assert following == Window(published.end, WINDOW)
    assert "before the end of window" in log.getvalue()
    assert "was the clock set back?" in log.getvalue()

    _write_marker(output, published, None, published.end)
    log = io.StringIO()
    assert _resume(output, WINDOW, lambda: back, log) == following
    assert "was the clock set back?" in log.getvalue()
    # A clock that is right opens the window it reads, and says nothing.
    log = io.StringIO()
    later = published.end + 3 * WINDOW + 5
    assert _resume(output, WINDOW, lambda: later, log) == window_at(
        later, WINDOW)
    assert _next_window(output, published, WINDOW, later, log) == window_at(
        later, WINDOW)
    assert "clock" not in log.getvalue()


def test_a_restart_marks_final_the_hour_of_a_run_its_recovery_completed(
        tmp_path):
    """A window's run failed part way through publishing, a later window
    of another hour had nothing new and was marked, then the watcher
    stopped: the next watcher's recovery completes the run, and both
    hours, which no later window writes into, get _SUCCESS (only the last
    marker's did)."""
    output, log = str(tmp_path / "out"), io.StringIO()
    hour = 1_700_000_000 // 3600 * 3600
    completed = window_at(hour + 10, WINDOW)
    empty = window_at(hour + 2 * 3600 + 10, WINDOW)
    os.makedirs(os.path.join(output, "_runs"))
    with open(os.path.join(output, "_runs", "20231114T220000Z-abc.json"),
              "w") as handle:
        json.dump({"run_id": "20231114T220000Z-abc", "window":
                   completed.as_dict(), "counts": {"predicted": 2,
                                                    "failed": 0}}, handle)
    _write_marker(output, empty, None, empty.end)
    now = hour + 3 * 3600 + 5
    assert _resume(output, WINDOW, lambda: now, log) == window_at(now, WINDOW)

    def final(window):
        return all(os.path.exists(os.path.join(
            output, kind, *window.partition.split("/"), "_SUCCESS"))
            for kind in ("predictions", "errors"))

    assert final(completed) and final(empty)
    assert {m["run_id"] for m in markers(output)} == {
        None, "20231114T220000Z-abc"}


def test_a_watched_folder_that_goes_away_for_a_while_is_waited_for(
        tmp_path, split):
    """A remount or a rotation takes the watched folder away between two
    looks: the watcher says so and goes on; files there when it is back
    are published once."""
    import shutil

    folder, output = tmp_path / "inbox", tmp_path / "out"
    folder.mkdir()
    with watching(folder, output) as (log, clock):
        wait_for(lambda: "imgclass: watching" in log.getvalue(), log=log,
                 what="the watch to start")
        shutil.rmtree(folder)  # before the first window is published
        clock.advance(2 * WINDOW, log)
        assert not clock.finished, log.getvalue()[-3000:]
        assert f"input {str(folder)!r} is gone; its files wait until it " \
            f"is back" in log.getvalue()
        truth = write_digits(str(folder), split, 3, nested=False)
        advance_until(clock, lambda: set(truth) <= set(
            published_paths(output)), log, "the files once back")
    assert sorted(check_contract(output)) == sorted(truth)


def test_files_a_symlink_also_reaches_are_published_once(tmp_path, split):
    """A watched folder holding a symlink to one of its own folders: each
    file once, under its real path, and no window runs again for the
    link's paths."""
    folder, output = tmp_path / "inbox", tmp_path / "out"
    truth = write_digits(str(folder / "real"), split, 3, nested=False)
    old = time.time() - 600
    for path in truth:
        os.utime(path, (old, old))
    os.symlink(folder / "real", folder / "alias")
    with watching(folder, output) as (log, clock):
        advance_until(clock, lambda: set(truth) <= set(
            published_paths(output)), log, "the files")
        runs = len(manifests(output))
        clock.advance(3 * WINDOW, log)
        assert len(manifests(output)) == runs, log.getvalue()[-3000:]
    assert sorted(check_contract(output)) == sorted(truth)


def test_a_window_whose_publishing_a_later_window_completed_is_not_run_again(
        tmp_path, split, monkeypatch):
    """A window's publishing fails part way (a full disk): the next
    window's run completes it. Its files are then done, and the windows
    after that do not run (and publish) again for them."""
    from pipeline import outputs

    folder, output = tmp_path / "inbox", tmp_path / "out"
    truth = write_digits(str(folder), split, 3, nested=False)
    old = time.time() - 600
    for path in truth:
        os.utime(path, (old, old))
    write, failed = outputs._write_file, []

    def full_once(path, data):
        if f"{os.sep}_runs{os.sep}" in path and not failed:
            failed.append(path)
            raise OSError(28, "No space left on device")
        write(path, data)

    monkeypatch.setattr(outputs, "_write_file", full_once)
    with watching(folder, output) as (log, clock):
        advance_until(clock, lambda: set(truth) <= set(
            published_paths(output)) and manifests(output), log,
            "the interrupted window, completed")
        assert failed and "finished publishing interrupted run(s)" in \
            log.getvalue()
        clock.advance(WINDOW, log)  # at most one more run, then none
        runs = len(manifests(output))
        clock.advance(3 * WINDOW, log)
        assert len(manifests(output)) == runs, log.getvalue()[-3000:]
    assert sorted(published_paths(output)) == sorted(truth)
    # Every published window has its marker, the completed one too.
    markers = {json.load(open(m))["run_id"] for m in glob.glob(
        os.path.join(str(output), "_windows", "*.json"))}
    assert set(manifests(output)) <= markers


def test_an_hour_is_not_final_while_a_window_of_it_is_half_published(
        tmp_path, split, monkeypatch):
    """The last window of an hour fails part way through publishing (an
    object store's 503 on a move): its other files land in its hour when
    the next window's run completes it, so the hour's _SUCCESS waits for
    that; it was written as the failed window ended."""
    from pipeline import outputs

    folder, output = tmp_path / "inbox", tmp_path / "out"
    truth = write_digits(str(folder), split, 3, nested=False)
    write_bad_files(str(folder / "bad"))  # rows in errors/ too
    old = time.time() - 600
    for dirpath, _, names in os.walk(folder):
        for name in names:
            os.utime(os.path.join(dirpath, name), (old, old))
    hour = int(time.time()) // 3600 * 3600
    move, failed = outputs._move, []

    def unavailable_once(sources, destinations):
        if f"{os.sep}errors{os.sep}" in destinations[0] and not failed:
            failed.append(destinations[0])
            raise OSError(5, "503 Service Unavailable")
        move(sources, destinations)

    monkeypatch.setattr(outputs, "_move", unavailable_once)
    success = [os.path.join(str(output), kind, *hour_partition(hour).split(
        "/"), "_SUCCESS") for kind in ("predictions", "errors")]
    with watching(folder, output, start=hour + 3600 - WINDOW + 1) as (
            log, clock):
        clock.advance(WINDOW, log)  # the hour's last window, failed
        assert failed, log.getvalue()[-3000:]
        assert not any(os.path.exists(p) for p in success)
        advance_until(clock, lambda: all(os.path.exists(p) for p in success),
                      log, "the hour completed, then final")
    paths = check_contract(output)
    assert set(truth) <= set(paths)
    assert all(f"/{hour_partition(hour)}/" in p  # the failed window's
               for kind in ("predictions", "errors")
               for p in parquet_files(output, kind)
               if pq.read_metadata(p).num_rows)


def test_a_disk_full_for_a_window_fails_that_window_and_leaves_no_probe(
        tmp_path, split, monkeypatch):
    """A window's run finds its output cannot be written (the disk filled
    up since the watcher started): that window fails and its files wait
    for the next, as for any failed run; it stopped the watcher with exit
    2 (a configuration mistake, though work was done), and the write probe
    stayed in the output."""
    from apache_beam.io.filesystems import FileSystems

    folder, output = tmp_path / "inbox", tmp_path / "out"
    truth = write_digits(str(folder), split, 3, nested=False)
    create, full = FileSystems.create, threading.Event()

    class Full:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(28, "No space left on device")

    def filling(path, *args, **kwargs):
        handle = create(path, *args, **kwargs)
        return Full(handle) if full.is_set() else handle

    monkeypatch.setattr(FileSystems, "create", staticmethod(filling))
    with watching(folder, output, settle=0,
                  start=_away_from_an_hour_end()) as (log, clock):
        wait_for(lambda: "imgclass: watching" in log.getvalue(), log=log,
                 what="the watch to start")
        full.set()
        clock.advance(WINDOW, log)
        assert not clock.finished, log.getvalue()[-3000:]
        assert "(1/3 failures in a row)" in log.getvalue()
        assert "No space left on device" in log.getvalue()
        assert not glob.glob(str(output / "_write_test_*"))
        full.clear()
        advance_until(clock, lambda: set(truth) <= set(
            published_paths(output)), log, "the files, once there is room")
    assert sorted(check_contract(output)) == sorted(truth)


def test_a_published_window_whose_marker_fails_is_said_so_and_marked_later(
        tmp_path, split, monkeypatch):
    """The run is published, then writing its window's marker fails (an
    object store's 503): the watcher says the window was published, not
    that its files wait (they are done: the next run leaves them), and the
    next window that publishes writes the missing marker."""
    from pipeline import watch as watch_module

    folder, output = tmp_path / "inbox", tmp_path / "out"
    first = write_digits(str(folder / "a"), split, 3, seed=1)
    write_marker, failed = watch_module._write_marker, []

    def unavailable_once(output_, window, manifest, closed_at):
        if manifest is not None and not failed:
            failed.append(manifest["run_id"])
            raise OSError(5, "503 Service Unavailable")
        write_marker(output_, window, manifest, closed_at)

    monkeypatch.setattr(watch_module, "_write_marker", unavailable_once)
    with watching(folder, output, settle=0) as (log, clock):
        advance_until(clock, lambda: failed, log, "the first run")
        (run_id,) = failed
        said = log.getvalue()
        assert f"was published (run {run_id}) but not marked, the next " \
               f"window that publishes marks it (1/3 failures in a row)" \
               in said
        assert "its files wait" not in said
        assert set(first) <= set(published_paths(output))
        assert run_id not in {m["run_id"] for m in markers(output)}
        second = write_digits(str(folder / "b"), split, 3, seed=2)
        advance_until(clock, lambda: set(second) <= set(
            published_paths(output)), log, "the next window's files")
    assert run_id in {m["run_id"] for m in markers(output)}
    assert sorted(check_contract(output)) == sorted({**first, **second})


@pytest.mark.parametrize("quiet", [False, True])
def test_a_first_stop_is_said_unless_quiet(capfd, quiet):
    """-q prints only errors: not the note that the watcher stops after
    the window being published."""
    from pipeline.watch import STOPPING, stop_on_signals

    with stop_on_signals(threading.Event(), quiet=quiet) as stop:
        signal.raise_signal(signal.SIGTERM)
        assert stop.is_set()
    assert capfd.readouterr().err == ("" if quiet else f"{STOPPING}\n")


YEAR = 365 * 24 * 3600
FUTURE_WARNING = "was modified in the future"


def marker_end(output, path):
    """When the window that published ``path`` ended (Unix seconds)."""
    (run_id,) = {r["run_id"] for kind in ("predictions", "errors")
                 for r in rows(output, kind, ["path", "run_id"])
                 if r["path"] == path}
    (marker,) = [m for m in markers(output) if m["run_id"] == run_id]
    return datetime.datetime.fromisoformat(marker["window"]["end"]).timestamp()


def test_a_file_modified_in_the_future_is_classified_once_it_stayed_unchanged(
        tmp_path, split):
    """A skewed clock (or ``cp -p`` from one) dates a file a year ahead: it
    settles once unchanged for --settle seconds of the watcher's clock, is
    classified once, and the watcher warns once; a file modified in the
    past is published in the first window, as ever, without a warning."""
    folder, output = tmp_path / "inbox", tmp_path / "out"
    settle = 90  # longer than a window: one window ends before it settled
    (past,) = write_digits(str(folder), split, 1, nested=False)
    old = time.time() - 600
    os.utime(past, (old, old))
    with watching(folder, output, settle=settle) as (log, clock):
        advance_until(clock, lambda: markers(output), log, "the first window")
        assert published_paths(output) == [past]
        dropped = clock()
        (future,) = write_digits(str(folder / "skewed"), split, 1, seed=5)
        os.utime(future, (dropped + YEAR, dropped + YEAR))
        advance_until(clock, lambda: future in published_paths(output), log,
                      "the file modified in the future", windows=5)
        assert dropped + settle <= marker_end(output, future) <= (
            dropped + settle + WINDOW + INTERVAL + 1.0)
        clock.advance(3 * WINDOW, log)  # done: not classified again
    assert sorted(check_contract(output)) == sorted([past, future])
    assert [r["path"] for r in rows(output, "predictions")].count(future) == 1
    (line,) = [line for line in log.getvalue().splitlines()
               if FUTURE_WARNING in line]
    assert line.startswith(f"imgclass: warning: {future} {FUTURE_WARNING}")
    assert f"unchanged for {settle}s of this watcher's clock" in line


def test_a_file_modified_in_the_future_is_not_read_while_it_keeps_changing(
        tmp_path, split):
    """Its size or its (future) time changes at every look: it is not read,
    and not warned about, until it stays unchanged for --settle seconds of
    the watcher's clock."""
    folder, output = tmp_path / "inbox", tmp_path / "out"
    folder.mkdir()
    path = str(folder / "skewed.png")
    digit_image(split.test_images[0], 32, Image.Resampling.BICUBIC).save(
        path, "PNG")
    mtime = [time.time() + YEAR]
    os.utime(path, (mtime[0], mtime[0]))
    with watching(folder, output) as (log, clock):
        for step in range(3 * WINDOW // INTERVAL):  # three window ends
            if step % 2:  # a byte more, the same time
                with open(path, "ab") as handle:
                    handle.write(b"\0")
            else:  # another time, the same size
                mtime[0] += 1
            os.utime(path, (mtime[0], mtime[0]))
            last_change = clock()
            clock.advance(INTERVAL, log)
        assert len(markers(output)) >= 2, log.getvalue()[-3000:]
        assert path not in published_paths(output)
        assert path not in ledger_paths(output)
        assert FUTURE_WARNING not in log.getvalue()
        advance_until(clock, lambda: path in published_paths(output), log,
                      "the file once unchanged")
        # Unchanged from the first look after its last change: the
        # interval's end, or sooner a window's end within that interval.
        assert marker_end(output, path) >= last_change + SETTLE
        clock.advance(2 * WINDOW, log)
    assert check_contract(output) == [path]
    assert log.getvalue().count(FUTURE_WARNING) == 1


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="Linux's full "
                    "device")
def test_a_stop_is_taken_when_stderr_cannot_be_written():
    """2>/dev/full: the note that the watcher stops was an OSError raised
    in the signal handler, which failed the watcher (exit 1)."""
    from pipeline.watch import stop_on_signals

    full = os.open("/dev/full", os.O_WRONLY)
    saved = os.dup(2)
    os.dup2(full, 2)
    try:
        with stop_on_signals(threading.Event()) as stop:
            signal.raise_signal(signal.SIGTERM)
            assert stop.is_set()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(full)


def output_tree(output, run_id):
    """The names of the files and folders below ``output``, relative,
    with ``run_id`` written RUN."""
    found = []
    for folder, subfolders, files in os.walk(str(output)):
        for name in subfolders + files:
            path = os.path.relpath(os.path.join(folder, name), str(output))
            found.append(path.replace(run_id, "RUN"))
    return sorted(found)


def test_an_overwrite_of_a_watch_output_leaves_a_fresh_classify_output(
        tmp_path, split, cli):
    """classify --overwrite into a watcher's output left its _windows/
    markers (naming a run whose files it had deleted) and its emptied
    date=/hour= folders."""
    folder, output = tmp_path / "inbox", tmp_path / "out"
    write_digits(str(folder), split, 4, nested=False)
    with watching(folder, output, settle=0) as (log, clock):
        advance_until(clock, lambda: ledger_paths(output), log,
                      "the first files in the ledger")
    assert markers(output)
    other = tmp_path / "other"
    truth = write_digits(str(other), split, 3, seed=5, nested=False)
    code, _, err = cli("classify", "--input", other, "--output", output,
                       "--overwrite", "-q")
    assert code == 0, err
    (run_id,) = manifests(output)
    assert sorted((r["path"], r["run_id"]) for r in rows(
        output, "predictions", ["path", "run_id"])) == sorted(
            (path, run_id) for path in truth)
    assert rows(output, "errors") == []
    fresh = tmp_path / "fresh"
    code, _, err = cli("classify", "--input", other, "--output", fresh, "-q")
    assert code == 0, err
    (fresh_id,) = manifests(fresh)
    assert output_tree(output, run_id) == output_tree(fresh, fresh_id)
    # As on any classify output (README, "Watching a folder"): refused.
    code, _, err = cli("watch", "--input", folder, "--output", output)
    assert code == 2
    assert "give 'imgclass watch' an output folder of its own" in err
