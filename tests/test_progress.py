"""What the terminal shows while a run works: the matched count when
matching ends, then progress lines added up over the worker processes
(done / total, %, images/s, ETA); each run counts from zero. Clocks are
injected: nothing here waits on the wall clock."""

import io
import json
import os
import re

import pytest

from pipeline import outputs
from pipeline.cli import main
from pipeline.progress import Monitor
from tests import client_errors
from tests.conftest import write_digits
from transforms import progress


class Clock:
    def __init__(self, now=0.0):
        self.now = now

    def __call__(self):
        return self.now


def worker_wrote(folder, pid, done):
    """A worker process's count file, as transforms.progress writes it."""
    with open(os.path.join(folder, f"{pid}.json"), "w") as handle:
        json.dump({"done": done}, handle)


def test_progress_lines_add_up_the_workers_with_total_rate_and_eta(
        tmp_path):
    paths = outputs.RunOutputs(str(tmp_path / "out"), "run1", None)
    folder = str(tmp_path / "progress")
    os.makedirs(folder)
    clock, log = Clock(), io.StringIO()
    monitor = Monitor(paths, folder, every=10, log=log, clock=clock)
    clock.now = 0.5
    monitor.tick()
    assert log.getvalue() == ""  # matching has not ended
    outputs.write_count(100, paths.matched_count_path)
    outputs.write_count(90, paths.todo_count_path, key="to_classify")
    monitor.tick()
    assert log.getvalue() == "imgclass: matched 100 files, 90 to classify\n"
    clock.now = 1.0
    worker_wrote(folder, 101, 10)
    worker_wrote(folder, 102, 5)
    monitor.tick()  # the rate counts from here: 15 files at 1 s
    assert log.getvalue().count("\n") == 1
    clock.now = 10.0
    worker_wrote(folder, 101, 30)
    worker_wrote(folder, 102, 30)
    monitor.tick()
    assert log.getvalue().splitlines()[-1] == (
        "imgclass: progress: 60 / 90 images (67%), 5 images/s, ETA 6s")
    clock.now = 25.0
    monitor.tick()  # nothing more was done: no line
    assert log.getvalue().count("\n") == 2
    worker_wrote(folder, 102, 60)
    monitor.tick()
    assert log.getvalue().splitlines()[-1] == (
        "imgclass: progress: 90 / 90 images (100%), 3 images/s, ETA 0s")


def test_a_worker_writes_its_count_at_once_then_each_second_and_at_the_end(
        tmp_path):
    folder = str(tmp_path / "progress")
    clock = Clock(100.0)
    counter = progress.Counter(folder, clock=clock)
    counter.add(5)
    assert progress.read_done(folder) == 5  # the first files, at once
    clock.now = 100.5
    counter.add(3)
    assert progress.read_done(folder) == 5  # at most once a second
    counter.flush()  # the end of a bundle
    assert progress.read_done(folder) == 8
    clock.now = 101.6
    counter.add(2)
    assert progress.read_done(folder) == 10
    assert os.listdir(folder) == [f"{os.getpid()}.json"]


def test_each_run_counts_from_zero(tmp_path):
    """A watch window is a new run: its rate and count start again."""
    first = progress.counter("window-1", None)
    assert progress.counter("window-1", None) is first
    first.every = 0
    first.add(7)
    second = progress.counter("window-2", None)
    assert second is not first and second.done == 0


def test_a_remote_worker_prints_its_own_count_and_rate():
    clock, log = Clock(50.0), io.StringIO()
    counter = progress.Counter(None, clock=clock, every=10, log=log)
    counter.add(100)  # its first batch: the rate counts from here
    clock.now = 55.0
    counter.add(100)
    assert log.getvalue() == ""
    clock.now = 60.0
    counter.add(100)
    assert log.getvalue() == (f"imgclass: progress: 300 images done by "
                              f"worker {os.getpid()}, 30 images/s\n")


def test_a_run_says_how_many_files_it_matched_before_classifying(
        tmp_path, split, capsys, monkeypatch):
    monkeypatch.setenv(progress.PROGRESS_ENV, "0.001")
    folder = tmp_path / "in"
    write_digits(str(folder), split, 5)
    os.symlink(tmp_path / "gone.png", folder / "dangling.png")
    assert main(["classify", "--input", str(folder), "--output",
                 str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert "imgclass: matched 6 files, 5 to classify" in lines
    matched = lines.index("imgclass: matched 6 files, 5 to classify")
    done = [int(m.group(1)) for m in (
        re.fullmatch(r"imgclass: progress: (\d+) / 5 images \(\d+%\).*", line)
        for line in lines) if m]
    assert all(lines.index(line) > matched for line in lines
               if "progress:" in line)
    assert done == sorted(done) and all(0 < d <= 5 for d in done)
    assert re.match(r"imgclass: run \S+ done in", lines[-1])


def test_a_rerun_with_nothing_new_is_not_matching_nothing(
        tmp_path, split, capsys, monkeypatch):
    """With --skip-done, "matches no file" is about the listing: a night
    whose files were all done before runs (exit 0), without
    --allow-empty, and says it has nothing to classify."""
    monkeypatch.setenv(progress.PROGRESS_ENV, "0.001")
    folder, output = str(tmp_path / "in"), str(tmp_path / "out")
    write_digits(folder, split, 4)
    for _ in range(2):
        assert main(["classify", "--input", folder, "--output", output,
                     "--skip-done"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert "imgclass: matched 4 files" in lines  # the first night
    assert "imgclass: matched 4 files, 0 to classify" in lines
    with open(os.path.join(output, "_manifest.json")) as handle:
        counts = json.load(handle)["counts"]
    assert (counts["matched"], counts["skipped"], counts["predicted"]) == (
        4, 4, 0)


@pytest.mark.parametrize("error", [
    OSError("503 Service Unavailable"),
    client_errors.gcs_unavailable("GET", "gs://b/out/_staging/run1/x")],
    ids=["OSError", "ServiceUnavailable"])
def test_a_store_error_reading_the_counts_is_retried_at_the_next_look(
        tmp_path, monkeypatch, error):
    """The counts are on the output (an object store's 503, as Beam's
    OSError or as the client's own error): a look that cannot read them
    prints nothing, and the next one does (the thread must not die with a
    traceback, nor the run's end)."""
    paths = outputs.RunOutputs(str(tmp_path / "out"), "run1", None)
    folder = str(tmp_path / "progress")
    os.makedirs(folder)
    outputs.write_count(3, paths.matched_count_path)
    outputs.write_count(3, paths.todo_count_path, key="to_classify")
    log = io.StringIO()
    monitor = Monitor(paths, folder, every=10, log=log, clock=Clock())
    real = outputs.RunOutputs.todo_count

    def unavailable(self):
        raise error

    monkeypatch.setattr(outputs.RunOutputs, "todo_count", unavailable)
    monitor.tick()
    assert log.getvalue() == ""
    monkeypatch.setattr(outputs.RunOutputs, "todo_count", real)
    monitor.tick()
    assert log.getvalue() == "imgclass: matched 3 files\n"
