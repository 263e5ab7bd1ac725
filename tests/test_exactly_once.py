"""Exactly once through the command line, with real pipelines: reruns after
crashes while publishing, --overwrite, the output lock, Ctrl-C and SIGTERM,
and runs whose counts cannot be established. An outside reader (DuckDB)
checks what a data lake would see."""

import contextlib
import datetime
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

import duckdb
import pytest
from apache_beam.io.filesystems import FileSystems

from model_store import fs
from pipeline import outputs
from pipeline.run import ClassifyConfig
from tests.test_publishing import (
    ROOTS,
    exists,
    new_output,
    put_bytes,
    read_json,
)

SAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "samples",
                       "digits")


class Killed(BaseException):
    """The process died here."""


@pytest.fixture
def images(tmp_path):
    """Three sample digits, and two more for a later run."""
    names = sorted(os.listdir(SAMPLES))
    first, later = tmp_path / "in", tmp_path / "later"
    first.mkdir()
    later.mkdir()
    for name in names[:3]:
        shutil.copy(os.path.join(SAMPLES, name), first / name)
    for name in names[3:5]:
        shutil.copy(os.path.join(SAMPLES, name), later / name)
    return str(first), str(later)


def lake_paths(output):
    """The paths an outside reader sees in predictions and errors."""
    found = []
    for kind in ("predictions", "errors"):
        if not glob.glob(f"{output}/{kind}/**/*.parquet", recursive=True):
            continue  # DuckDB refuses a glob that matches nothing
        found += [row[0] for row in duckdb.sql(
            f"select path from read_parquet('{output}/{kind}/**/*.parquet')"
        ).fetchall()]
    return sorted(found)


def runs(output):
    return sorted(os.listdir(os.path.join(output, "_runs")))


def classify(cli, inputs, output, *extra):
    args = ["classify", "--output", output, *extra]
    for folder in inputs:
        args += ["--input", folder]
    return cli(*args)


def crash_at(monkeypatch, operation, matches, *, torn=False, after=True):
    """Makes the first call of ``outputs.<operation>`` whose first path
    argument satisfies ``matches`` kill the run (torn: half the bytes of a
    write land, as on a store without atomic writes)."""
    real = getattr(outputs, operation)

    def faulty(*args):
        path = args[0][0] if operation == "_move" else args[0]
        if not matches(path):
            return real(*args)
        monkeypatch.setattr(outputs, operation, real)
        if torn:
            with open(path, "wb") as handle:
                handle.write(args[1][: len(args[1]) // 2])
            raise Killed(path)
        if after:
            real(*args)
        raise Killed(path)

    monkeypatch.setattr(outputs, operation, faulty)


def files_in(folder):
    return sorted(os.listdir(folder))


def test_a_rerun_after_a_crash_right_after_the_publish_record_adds_no_row(
        cli, images, tmp_path, monkeypatch):
    first, _ = images
    output = str(tmp_path / "out")
    crash_at(monkeypatch, "_write_file",
             lambda p: p.endswith(outputs.PUBLISH))
    with pytest.raises(Killed):
        classify(cli, [first], output)
    assert not os.path.exists(os.path.join(output, "_SUCCESS"))

    code, _, err = classify(cli, [first], output)  # the same command again
    assert code == 2
    assert "finished publishing interrupted run" in err
    assert err.strip().splitlines()[-1].startswith(
        f"imgclass: error: output {output!r} holds an earlier run")
    assert lake_paths(output) == sorted(
        os.path.join(first, n) for n in files_in(first))
    assert len(runs(output)) == 1
    assert os.path.exists(os.path.join(output, "_SUCCESS"))


def test_recovery_that_fails_is_one_line_and_retried_by_the_next_run(
        cli, images, tmp_path, monkeypatch, capsys):
    first, _ = images
    output = str(tmp_path / "out")
    crash_at(monkeypatch, "_write_file",
             lambda p: p.endswith(outputs.PUBLISH))
    with pytest.raises(Killed):
        classify(cli, [first], output, "--skip-done")
    capsys.readouterr()  # what the killed run printed

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs, "_move", full_disk)
    (staging,) = glob.glob(os.path.join(output, "_staging", "*"))
    code, _, err = classify(cli, [first], output, "--skip-done")
    assert code == 1
    (line,) = err.strip().splitlines()
    assert line.startswith(
        f"imgclass: run failed: could not complete the interrupted "
        f"publishing in {output}: OSError: [Errno 28] No space left on "
        f"device; ")
    # How to get out: fix the cause and run again, or move the run aside.
    assert "run again" in line and f"move {staging} out of" in line
    monkeypatch.undo()
    code, _, err = classify(cli, [first], output, "--skip-done")
    assert code == 0, err
    assert lake_paths(output) == sorted(
        os.path.join(first, n) for n in files_in(first))
    assert len(runs(output)) == 2


def test_a_publishing_error_is_reported_by_its_first_line(
        cli, images, tmp_path, monkeypatch):
    """pyiceberg and deltalake (and SQLAlchemy below them) add lines of
    background to their errors; the message keeps the first."""
    first, _ = images
    output = str(tmp_path / "out")

    def conflict(*args):
        raise RuntimeError("(sqlite3.OperationalError) database is locked\n"
                           "(Background on this error at: https://sqlalche"
                           ".me/e/20/e3q8)")

    monkeypatch.setattr(outputs, "_move", conflict)
    code, _, err = classify(cli, [first], output)
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith("imgclass: run failed: ")
    assert "publishing failed (RuntimeError: (sqlite3.OperationalError) " \
        "database is locked); the next run" in line


def test_a_torn_publish_record_is_discarded_without_a_traceback(
        cli, images, tmp_path, monkeypatch):
    first, _ = images
    output = str(tmp_path / "out")
    crash_at(monkeypatch, "_write_file",
             lambda p: p.endswith(outputs.PUBLISH), torn=True)
    with pytest.raises(Killed):
        classify(cli, [first], output)

    for extra in ([], ["--skip-done"]):
        code, _, err = classify(cli, [first], output, *extra)
        assert code == 0, err
        assert "Traceback" not in err
    assert lake_paths(output) == sorted(
        os.path.join(first, n) for n in files_in(first))
    assert len(runs(output)) == 2  # the second run skipped every file


def test_an_overwrite_killed_after_removing_part_of_the_old_run_loses_neither(
        cli, images, tmp_path, monkeypatch):
    first, later = images
    output = str(tmp_path / "out")
    assert classify(cli, [first], output)[0] == 0
    old = lake_paths(output)
    crash_at(monkeypatch, "_delete_file",
             lambda p: "/predictions/part-" in p)
    with pytest.raises(Killed):
        classify(cli, [later], output, "--overwrite")
    # The old run is partly gone; nothing vouches for what readers see.
    assert not os.path.exists(os.path.join(output, "_SUCCESS"))
    assert lake_paths(output) != old

    # The next run (here a plain one, refused) first completes the publish.
    code, _, err = classify(cli, [later], output)
    assert code == 2 and "holds an earlier run" in err
    new = sorted(os.path.join(later, n) for n in files_in(later))
    assert lake_paths(output) == new
    assert len(runs(output)) == 1
    code, _, err = classify(cli, [later], output, "--overwrite")
    assert code == 0, err
    assert lake_paths(output) == new and len(runs(output)) == 1


def hold_lock(output, owner="nightly-run"):
    """Another process holding the output's lock until its stdin closes."""
    process = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\nfrom pipeline import outputs\n"
         f"with outputs.locked({output!r}, {owner!r}):\n"
         "    print('held', flush=True)\n    sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=os.path.join(os.path.dirname(__file__), os.pardir))
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_run_on_a_locked_output_stops_with_one_line(
        cli, images, tmp_path):
    first, _ = images
    output = tmp_path / "out"
    output.mkdir()
    holder = hold_lock(str(output))
    try:
        for extra in ([], ["--skip-done"], ["--overwrite"]):
            code, _, err = classify(cli, [first], str(output), *extra)
            assert code == 2
            (line,) = err.strip().splitlines()
            assert line.startswith(
                f"imgclass: error: output {str(output)!r} is in use by run "
                f"nightly-run (pid {holder.pid} on {socket.gethostname()}, "
                f"since ")
        assert files_in(output) == ["_lock"]
    finally:
        holder.communicate("")
    assert files_in(output) == []  # released by its owner
    assert classify(cli, [first], str(output))[0] == 0
    assert not os.path.exists(output / "_lock")


def test_a_lock_left_by_a_dead_process_is_taken_over(cli, images, tmp_path):
    first, _ = images
    output = tmp_path / "out"
    output.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (output / "_lock").write_text(json.dumps({
        "owner": "killed-run", "host": socket.gethostname(),
        "pid": dead.pid, "created_at": "2026-01-01T00:00:00+00:00"}))
    code, _, err = classify(cli, [first], str(output))
    assert code == 0, err
    assert not os.path.exists(output / "_lock")


def write_lock(output, **fields):
    """A lock as a run writes it (a dict of ``fields``), local or on an
    object store."""
    put_bytes(f"{output}/_lock", json.dumps(fields).encode())


def iso(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc
                                           ).isoformat()


def lock_output(root, folder):
    """An output of ``root`` with nothing in it (a local one made)."""
    output = new_output(root, folder)
    if root == "local":
        os.makedirs(output)
    return output


@pytest.mark.parametrize("root", ROOTS)
def test_a_lock_not_refreshed_for_the_timeout_is_stale(tmp_path, root):
    output, then = lock_output(root, str(tmp_path)), 1_800_000_000.0
    lock = f"{output}/_lock"
    stale_at = then + outputs.LOCK_STALE_SECONDS
    # A run on another host (or container) that was killed.
    write_lock(output, owner="elsewhere", host="other-host", pid=1,
               created_at=iso(then - 3600), refreshed_at=iso(then))
    with pytest.raises(outputs.ConfigError) as refused:
        with outputs.locked(output, "mine", clock=lambda: stale_at - 60):
            pass
    (line,) = str(refused.value).splitlines()  # and the way out
    assert line == (f"output {output!r} is in use by run elsewhere (pid 1 "
                    f"on other-host, since {iso(then - 3600)}); wait for it "
                    f"to finish, or delete {lock} if that run is gone")
    with outputs.locked(output, "mine", clock=lambda: stale_at + 60):
        held = read_json(lock)
        assert (held["owner"], held["pid"]) == ("mine", os.getpid())
    assert not exists(lock)

    # Same host, the pid now someone else's: alive, but never refreshed.
    write_lock(output, owner="old", host=socket.gethostname(),
               pid=os.getppid(), created_at=iso(then), refreshed_at=iso(then))
    with pytest.raises(outputs.ConfigError, match="in use by run old"):
        with outputs.locked(output, "mine", clock=lambda: then + 5):
            pass
    with outputs.locked(output, "mine", clock=lambda: stale_at + 1):
        pass

    # A lock its owner died writing (on an object store: one a store
    # returned damaged): held for a minute, then stale.
    fs.create(lock, b"")
    written = FileSystems.last_updated(lock)  # the store's time of writing
    with pytest.raises(outputs.ConfigError, match="cannot be read"):
        with outputs.locked(output, "mine"):  # now
            pass
    with outputs.locked(output, "mine", clock=lambda: written + 61):
        pass
    assert not exists(lock)


@pytest.mark.parametrize("root", ROOTS)
def test_a_lock_left_by_a_run_killed_on_this_host_is_taken_over_at_once(
        tmp_path, root):
    """SIGKILL runs no ``finally``: the lock stays, naming a process that
    is gone, and the next run takes it over (no waiting for a timeout)."""
    output = lock_output(root, str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = datetime.datetime.now(datetime.timezone.utc).timestamp()
    write_lock(output, owner="killed-run", host=socket.gethostname(),
               pid=dead.pid, created_at=iso(now), refreshed_at=iso(now))
    with outputs.locked(output, "next-run") as owner:
        assert read_json(f"{output}/_lock")["owner"] == owner["owner"] == \
            "next-run"
    assert not exists(f"{output}/_lock")


@pytest.mark.parametrize("root", ROOTS)
def test_a_lock_kept_fresh_by_its_running_owner_is_not_taken_over(
        tmp_path, root):
    """A long run refreshes its lock: past LOCK_STALE_SECONDS from its
    start, another run (another host's, here) still stops."""
    output, then = lock_output(root, str(tmp_path)), 1_800_000_000.0
    lock = f"{output}/_lock"
    later = then + 3 * outputs.LOCK_STALE_SECONDS
    with outputs.locked(output, "long-run", clock=lambda: then,
                        refresh_seconds=3600) as owner:
        assert outputs.refresh_lock(lock, owner, lambda: later)
        with pytest.raises(outputs.ConfigError, match="in use by run "
                                                      "long-run"):
            with outputs.locked(output, "other", clock=lambda: later + 60):
                pass
        assert read_json(lock)["owner"] == "long-run"
    assert not exists(lock)


@pytest.mark.parametrize("root", ROOTS)
def test_a_lock_that_cannot_be_removed_is_one_warning_line(tmp_path, root,
                                                           monkeypatch):
    """The run's outcome stands; the line says who waits and what to do.
    (An object store's delete can fail after the run published.)"""
    import io

    output = lock_output(root, str(tmp_path))
    lock = f"{output}/_lock"
    real_delete = FileSystems.delete

    def delete(paths):
        if lock in paths:
            raise OSError(5, "503 Service Unavailable")
        return real_delete(paths)

    log = io.StringIO()
    monkeypatch.setattr(FileSystems, "delete", delete)
    with outputs.locked(output, "mine", log=log):
        pass
    (line,) = log.getvalue().splitlines()
    assert line == (f"imgclass: warning: could not remove the lock {lock} "
                    f"(OSError: [Errno 5] 503 Service Unavailable); a run on "
                    f"this host takes it over, one on another host waits 10 "
                    f"minutes for it to go stale, unless you delete it")
    # Left as it was: once this process is gone, the next run on this host
    # takes it over (test_a_lock_left_by_a_run_killed_on_this_host_...).
    assert read_json(lock)["owner"] == "mine"


def test_a_running_owner_keeps_its_lock_fresh_and_only_its_own(tmp_path):
    output, then = str(tmp_path), 1_800_000_000.0
    lock = os.path.join(output, "_lock")
    with outputs.locked(output, "mine", clock=lambda: then,
                        refresh_seconds=3600) as owner:
        assert outputs.refresh_lock(lock, owner, lambda: then + 500)
        held = json.load(open(lock))
        assert held["refreshed_at"] == iso(then + 500)
        assert held["created_at"] == iso(then)
        # Taken over meanwhile (it had gone stale): not rewritten, kept.
        write_lock(output, owner="other", host="h", pid=2,
                   created_at=iso(then), refreshed_at=iso(then))
        assert not outputs.refresh_lock(lock, owner, lambda: then + 900)
    assert json.load(open(lock))["owner"] == "other"


def test_classify_and_watch_share_the_lock(cli, images, tmp_path):
    from pipeline.watch import watch

    first, _ = images
    output = str(tmp_path / "out")
    os.makedirs(output)
    with outputs.locked(output, "watch-1"):
        code, _, err = classify(cli, [first], output, "--skip-done")
        assert code == 2 and "in use by run watch-1" in err
    with outputs.locked(output, "nightly"):
        with pytest.raises(outputs.ConfigError, match="in use by run "
                                                      "nightly"):
            watch(ClassifyConfig(inputs=[first], output=output),
                  stop_event=threading.Event())
    assert not os.path.exists(os.path.join(output, "_lock"))


@pytest.mark.parametrize("signum,code,at", [
    (signal.SIGINT, 130, "pipeline"), (signal.SIGTERM, 143, "pipeline"),
    (signal.SIGINT, 130, "counting"), (signal.SIGTERM, 143, "counting")])
def test_ctrl_c_and_sigterm_publish_nothing_and_clean_up(
        cli, images, tmp_path, monkeypatch, signum, code, at):
    first, _ = images
    output = str(tmp_path / "out")
    if at == "pipeline":  # while the pipeline runs, in this process
        target, name = outputs, "write_count"
    else:  # once it finished, while the driver counts the staged files
        # (count_rows: the progress monitor reads the matched count too)
        target, name = outputs, "count_rows"
    real = getattr(target, name)

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, interrupted)
    # A shell that starts a job in the background (CI scripts) makes it
    # ignore Ctrl-C; Python then never raises KeyboardInterrupt. Here the
    # test plays the terminal, so Ctrl-C is delivered as at a prompt.
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        status, _, err = classify(cli, [first], output)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert status == code
    assert err.strip().splitlines()[-1] == \
        "imgclass: interrupted: nothing published"
    # The run created the output folder, and removed it again: no staging,
    # no lock, no _SUCCESS.
    assert not os.path.exists(output)


def test_a_run_whose_matched_count_is_lost_publishes_nothing(
        cli, images, tmp_path, monkeypatch):
    """As under a runner that drops an output (Beam's DaskRunner drops what
    finish_bundle emits): the counts cannot be established."""
    first, _ = images
    output = str(tmp_path / "out")
    monkeypatch.setattr(outputs, "write_count",
                        lambda count, path, **kwargs: None)
    code, _, err = classify(cli, [first], output)
    assert code == 1
    assert "counts cannot be established; nothing was published" in err
    assert not os.path.exists(output)  # created by the run, removed again


ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def classify_apart(output, *args, seconds=120):
    """``imgclass classify -q`` in a process of its own: ``(exit code,
    stderr)``; one that waits on a FIFO is killed after ``seconds`` and
    fails the test instead of hanging it."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "classify", "-q", "--output",
         output, *args], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True, text=True, timeout=seconds)
    return done.returncode, done.stderr


@pytest.mark.parametrize("name", ["_layout.json", "_lock", "_publish.json"])
def test_a_fifo_where_the_output_keeps_a_record_is_damage_not_a_hang(
        cli, images, tmp_path, name):
    """A damaged layout file (read from the folders), a lock that cannot be
    read (a minute old: taken over), a torn publish record (the run never
    started publishing): a FIFO in their place is read as such."""
    first, _ = images
    output = str(tmp_path / "out")
    assert classify(cli, [first], output)[0] == 0
    fifo = {"_layout.json": os.path.join(output, name),
            "_lock": os.path.join(output, name),
            "_publish.json": os.path.join(output, "_staging", "killed-run",
                                          name)}[name]
    if os.path.exists(fifo):
        os.remove(fifo)
    os.makedirs(os.path.dirname(fifo), exist_ok=True)
    os.mkfifo(fifo)
    os.utime(fifo, (0, os.stat(fifo).st_mtime - 120))
    code, err = classify_apart(output, "--input", first, "--skip-done")
    assert code == 0, err
    assert lake_paths(output) == sorted(
        os.path.join(first, n) for n in files_in(first))
    assert not os.path.exists(os.path.join(output, "_staging"))
    assert not os.path.exists(os.path.join(output, "_lock"))
    with open(os.path.join(output, "_layout.json")) as handle:
        assert json.load(handle)["layout"] == "none"


def test_a_fresh_fifo_lock_is_a_lock_that_cannot_be_read(images, tmp_path):
    first, _ = images
    output = tmp_path / "out"
    output.mkdir()
    os.mkfifo(output / "_lock")
    code, err = classify_apart(str(output), "--input", first)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith(f"imgclass: error: output {str(output)!r} is in "
                           f"use by a run whose lock cannot be read; ")


def rows_by_pyarrow(output):
    """``(path, run id)`` of the rows below predictions/ and errors/, with
    repeats, as pyarrow reads the files."""
    import pyarrow.parquet as pq

    rows = []
    for kind in ("predictions", "errors"):
        for name in glob.glob(f"{output}/{kind}/**/*.parquet",
                              recursive=True):
            table = pq.read_table(name, columns=["path", "run_id"])
            rows += zip(*(table.column(c).to_pylist() for c in table.column_names))
    return sorted(rows)


def kill_after_the_record(cli, monkeypatch, inputs, output, folder):
    """A run started in ``folder`` on ``output`` (as typed), killed right
    after its publish record was written."""
    monkeypatch.chdir(folder)
    crash_at(monkeypatch, "_write_file",
             lambda p: p.endswith(outputs.PUBLISH))
    with pytest.raises(Killed):
        classify(cli, inputs, output)


@pytest.mark.parametrize("named", ["relative", "absolute"])
def test_a_run_killed_while_publishing_is_completed_from_another_folder(
        cli, images, tmp_path, monkeypatch, named):
    first, _ = images
    started, elsewhere = tmp_path / "a", tmp_path / "b"
    started.mkdir()
    elsewhere.mkdir()
    kill_after_the_record(cli, monkeypatch, [first], "out", started)

    (killed,) = os.listdir(started / "out" / "_staging")

    monkeypatch.chdir(elsewhere)
    output = {"relative": os.path.join(os.pardir, "a", "out"),
              "absolute": str(started / "out")}[named]
    code, _, err = classify(cli, [first], output, "--skip-done")
    assert code == 0, err
    assert f"finished publishing interrupted run(s) {killed}" in err
    # Each file's row once, the killed run's: the next one skipped them.
    assert rows_by_pyarrow(started / "out") == sorted(
        (os.path.join(first, n), killed) for n in files_in(first))
    assert len(runs(started / "out")) == 2


def test_a_record_whose_files_cannot_be_found_is_not_published_without_them(
        cli, images, tmp_path, monkeypatch, capsys):
    """A record of an earlier release named the files relative to the
    folder its run started in: from another folder they are neither staged
    nor published, and recovery stops (one line, exit 1) rather than
    record the run without them."""
    from pipeline import run

    first, _ = images
    started, elsewhere = tmp_path / "a", tmp_path / "b"
    started.mkdir()
    elsewhere.mkdir()
    output = str(started / "out")
    monkeypatch.setattr(run, "_with_absolute_output", lambda config: config)
    kill_after_the_record(cli, monkeypatch, [first], "out", started)
    monkeypatch.undo()
    capsys.readouterr()  # what the killed run printed

    monkeypatch.chdir(elsewhere)
    (staging,) = glob.glob(os.path.join(output, "_staging", "*"))
    code, _, err = classify(cli, [first], output, "--skip-done")
    assert code == 1
    (line,) = err.strip().splitlines()
    assert line.startswith(f"imgclass: run failed: could not complete the "
                           f"interrupted publishing in {output}: "
                           f"LostFileError: run ")
    assert "is neither staged nor published as" in line
    assert "relative to the folder that run started in" in line
    assert os.path.exists(os.path.join(staging, outputs.PUBLISH))
    for name in ("_SUCCESS", "_manifest.json", "_runs"):
        assert not os.path.exists(os.path.join(output, name))

    monkeypatch.chdir(started)  # where that run started: completed
    code, _, err = classify(cli, [first], "out", "--skip-done")
    assert code == 0, err
    killed = os.path.basename(staging)
    assert rows_by_pyarrow(output) == sorted(
        (os.path.join(first, n), killed) for n in files_in(first))


@pytest.mark.parametrize("root", ROOTS)
def test_two_runs_taking_over_one_stale_lock_do_not_both_hold_it(
        tmp_path, monkeypatch, root):
    """Two runs find the same stale lock (a killed run's); the first takes
    it over while the second is deciding so. The second then finds the
    first's lock, not the stale one: it stops, as for any held lock, and
    does not remove the first's."""
    output = lock_output(root, str(tmp_path))
    write_lock(output, owner="killed-run", host="other-host", pid=1,
               created_at=iso(0), refreshed_at=iso(0))
    first, started = contextlib.ExitStack(), []
    judge = outputs._lock_is_stale

    def first_run_wins_meanwhile(*args):
        stale = judge(*args)
        if stale and not started:
            started.append(True)
            first.enter_context(outputs.locked(output, "first-run"))
        return stale

    monkeypatch.setattr(outputs, "_lock_is_stale", first_run_wins_meanwhile)
    with first:
        with pytest.raises(outputs.ConfigError, match="in use by run "
                                                      "first-run"):
            with outputs.locked(output, "second-run"):
                pass
        assert read_json(f"{output}/_lock")["owner"] == "first-run"
    assert not exists(f"{output}/_lock")
