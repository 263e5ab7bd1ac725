"""Ctrl-C and SIGTERM as a user or a scheduler sees them: before
publishing a run stops with 130 (143) and publishes nothing; once
publishing has started the run is completed, says so, and exits 0. An
outside reader (pyarrow) checks what was published."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading

import pyarrow.parquet as pq
import pytest

from pipeline import layout, outputs, run
from pipeline.signals import deferred

SAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "samples",
                       "digits")


@pytest.fixture
def images(tmp_path):
    """A folder with four sample digits."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in sorted(n for n in os.listdir(SAMPLES)
                       if os.path.isfile(os.path.join(SAMPLES, n)))[:4]:
        shutil.copy(os.path.join(SAMPLES, name), folder / name)
    return str(folder)


@contextlib.contextmanager
def ctrl_c_as_at_a_prompt():
    """A shell that starts a job in the background makes it ignore Ctrl-C;
    here the test plays the terminal (as in test_exactly_once)."""
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def signal_during(monkeypatch, target, name, signum):
    """Makes ``target.name`` send ``signum`` to this process, then do its
    work."""
    real = getattr(target, name)

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, interrupted)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("at", ["publish", "layout record", "summary"])
def test_a_signal_while_publishing_completes_the_run_and_exits_0(
        cli, images, tmp_path, monkeypatch, signum, at):
    output = str(tmp_path / "out")
    if at == "publish":
        signal_during(monkeypatch, outputs.RunOutputs, "publish", signum)
    elif at == "layout record":  # part way: about to record the layout
        signal_during(monkeypatch, layout, "record_bytes", signum)
    else:  # published, the summary line about to be printed
        signal_during(monkeypatch, run, "_summary", signum)
    with ctrl_c_as_at_a_prompt():
        handlers = [signal.getsignal(s) for s in (signal.SIGINT,
                                                  signal.SIGTERM)]
        code, _, err = cli("classify", "--input", images, "--output", output)
        # Given back: a later Ctrl-C or SIGTERM acts as before the run.
        assert [signal.getsignal(s) for s in (signal.SIGINT,
                                              signal.SIGTERM)] == handlers
    assert code == 0, err
    note = err.strip().splitlines()[-1]
    assert note.startswith(f"imgclass: {signal.Signals(signum).name} "
                           f"arrived while run ") and "completed" in note
    # Published whole: every input is a row, the run is recorded.
    table = pq.read_table(os.path.join(output, "predictions"))
    assert sorted(table.column("path").to_pylist()) == sorted(
        os.path.join(images, n) for n in os.listdir(images))
    assert pq.read_table(os.path.join(output, "errors")).num_rows == 0
    for name in ("_SUCCESS", "_manifest.json", "_layout.json"):
        assert os.path.exists(os.path.join(output, name)), name
    for name in ("_staging", "_lock"):
        assert not os.path.exists(os.path.join(output, name)), name


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130),
                                           (signal.SIGTERM, 143)])
def test_a_signal_just_before_publishing_publishes_nothing(
        cli, images, tmp_path, monkeypatch, signum, status):
    output = str(tmp_path / "out")
    # The driver collects the staged files right before it publishes them.
    signal_during(monkeypatch, outputs.RunOutputs, "staged_files", signum)
    with ctrl_c_as_at_a_prompt():
        code, _, err = cli("classify", "--input", images, "--output", output)
    assert code == status
    assert err.strip().splitlines()[-1] == \
        "imgclass: interrupted: nothing published"
    assert not os.path.exists(output)  # created by the run, removed again


def test_deferred_records_signals_and_restores_the_handlers():
    def mine(signum, frame):
        raise AssertionError("not while deferred")

    before = {s: signal.getsignal(s) for s in (signal.SIGINT,
                                               signal.SIGTERM)}
    signal.signal(signal.SIGTERM, mine)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with deferred() as held:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)  # ignored: stays ignored
        assert held == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_deferred_outside_the_main_thread_changes_nothing():
    found = []

    def work():
        before = signal.getsignal(signal.SIGTERM)
        with deferred() as held:
            found.append((held, signal.getsignal(signal.SIGTERM) is before))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert found == [([], True)]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_command_exits_changes_nothing(signum):
    """After the command has reported (and published), a signal during the
    interpreter's shutdown must neither kill it (a scheduler would see
    143 for a published run) nor print a traceback."""
    script = (
        "import atexit, os, signal, sys\n"
        "import pipeline.cli as cli\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "atexit.register(os.kill, os.getpid(), %d)\n"
        "cli.main = lambda: 0\n"
        "cli.run()\n" % signum)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=120,
                          cwd=os.path.join(os.path.dirname(__file__),
                                           os.pardir))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130),
                                           (signal.SIGTERM, 143)])
def test_a_stop_a_library_swallows_still_publishes_nothing(
        cli, images, tmp_path, monkeypatch, signum, status):
    """A finalizer or a catch-all callback (SQLAlchemy's pool while an
    Iceberg catalog opens) can swallow the KeyboardInterrupt a signal
    raised: the run went on and published with exit 0. It is stopped
    before publishing instead."""
    from model_store import store
    real = store.load_model

    def swallowing(*args, **kwargs):
        try:
            os.kill(os.getpid(), signum)
        except KeyboardInterrupt:
            pass
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "load_model", swallowing)
    output = str(tmp_path / "out")
    with ctrl_c_as_at_a_prompt():
        code, _, err = cli("classify", "--input", images, "--output", output)
    assert code == status, err
    assert err.strip().splitlines()[-1] == \
        "imgclass: interrupted: nothing published"
    assert not os.path.exists(output)


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130),
                                           (signal.SIGTERM, 143)])
def test_a_stop_a_library_turns_into_another_error_is_one_line(
        cli, tmp_path, monkeypatch, signum, status):
    """An import interrupted inside a library can surface later as another
    error (Theano's ``scipy.linalg.blas`` AttributeError after Ctrl-C
    during its import): the command reports the stop, in one line, with
    the stop's exit code, for every command (here ``models list``)."""
    from model_store import store

    def interrupted_import(*args, **kwargs):
        try:
            os.kill(os.getpid(), signum)
        except KeyboardInterrupt:
            pass  # swallowed, as an import machinery's clean-up may
        raise AttributeError("module 'scipy.linalg' has no attribute 'blas'")

    monkeypatch.setattr(store, "list_models", interrupted_import)
    with ctrl_c_as_at_a_prompt():
        code, out, err = cli("--store", tmp_path, "models", "list")
    assert (code, out, err) == (status, "", "imgclass: interrupted\n")


def test_ctrl_c_while_the_command_line_loads_is_one_line():
    """The ``imgclass`` script's entry point imports the command line
    itself: a Ctrl-C during those imports is not a traceback."""
    script = (
        "import builtins, signal, pipeline\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "real = builtins.__import__\n"
        "def loading(name, *args, **kwargs):\n"
        "    if name == 'model_store.datasets':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = loading\n"
        "pipeline.command()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=120,
                          cwd=os.path.join(os.path.dirname(__file__),
                                           os.pardir))
    assert (done.returncode, done.stderr) == (130, "imgclass: interrupted\n")


def signal_after(monkeypatch, target, name, signum, *, when=lambda *a: True):
    """Makes ``target.name`` do its work, then send ``signum`` to this
    process (if ``when(*args)``)."""
    real = getattr(target, name)

    def interrupted(*args, **kwargs):
        result = real(*args, **kwargs)
        if when(*args):
            os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(target, name, interrupted)


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130),
                                           (signal.SIGTERM, 143)])
@pytest.mark.parametrize("at", ["rename", "save_model", "save_version"])
def test_a_stop_after_the_version_is_saved_names_it(
        cli, tmp_path, monkeypatch, signum, status, at):
    """'models import onnx' stopped once its version was in place said only
    "interrupted". Stopped right after the folder is renamed into place,
    after it is saved (before latest is pinned) or after save_version."""
    from model_store import store
    from tests.test_store import _onnx_file

    root = str(tmp_path / "store")
    command = ("--store", root, "models", "import", "onnx",
               _onnx_file(tmp_path), "--name", "tiny")
    assert cli(*command)[0] == 0
    if at == "rename":
        signal_after(monkeypatch, os, "rename", signum,
                     when=lambda src, dst: dst == os.path.join(root, "tiny",
                                                               "2"))
    else:
        signal_after(monkeypatch, store, at, signum)
    with ctrl_c_as_at_a_prompt():
        code, out, err = cli(*command)
    monkeypatch.undo()
    assert (code, out) == (status, "")
    assert err.splitlines()[-1] == (
        "imgclass: interrupted after saving tiny@2; the store is consistent "
        "(tiny@latest is tiny@1)")
    code, out, _ = cli("--store", root, "models", "verify")
    assert code == 0 and "ok      tiny@2" in out
    assert not [name for name in os.listdir(os.path.join(root, "tiny"))
                if name.startswith(".") and name != ".lock"]
