"""The command as a terminal sees it, in a process of its own: Ctrl-C in
the middle of a local run (in process or with worker processes) exits 130
promptly with one line and publishes nothing; hostile files and worker
processes leave only imgclass's lines on stderr."""

import io
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import png_bomb, write_digits
from transforms.progress import PROGRESS_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "samples", "digits")
WORKERS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
THREADS = ["--direct_running_mode=multi_threading", "--direct_num_workers=2"]


def env():
    """This process's environment, with the progress lines on (an
    in-process test of -q turns them off here) and this checkout's code."""
    return {**{k: v for k, v in os.environ.items() if k != PROGRESS_ENV},
            "PYTHONPATH": ROOT}


def start(*args):
    """``imgclass ARGS`` in a process group of its own, with Ctrl-C handled
    as at a prompt (a background job would inherit it ignored)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=ROOT,
        env=env(), stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def finish(process, seconds=60):
    """``(exit code, stderr lines)``; fails if it does not end in time."""
    try:
        _, err = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, err = process.communicate()
        pytest.fail(f"still running {seconds} s later:\n{err[-3000:]}")
    return process.returncode, err.splitlines()


def left_running(group, seconds=10):
    """The processes of process ``group`` still running (not zombies)
    ``seconds`` after the call, or as soon as there are none."""
    deadline = time.monotonic() + seconds
    while True:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:  # ended meanwhile
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                found.append(int(pid))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.fixture(scope="module")
def many(tmp_path_factory, split):
    """Enough digits that a local run takes a few seconds."""
    folder = tmp_path_factory.mktemp("many")
    write_digits(str(folder), split, 300)
    return str(folder)


@pytest.mark.parametrize("beam_args", [[], THREADS, WORKERS],
                         ids=["in-process", "worker-threads",
                              "worker-processes"])
def test_ctrl_c_mid_run_exits_130_promptly_with_one_line(
        many, tmp_path, beam_args):
    output = tmp_path / "out"
    process = start("classify", "--input", many, "--output", output,
                    "--batch-size", "8", *beam_args)
    seen = []
    for line in process.stderr:  # matching has ended: classifying now
        seen.append(line.rstrip("\n"))
        if line.startswith("imgclass: matched "):
            break
    assert not any(" done in " in line for line in seen), "\n".join(seen)
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C does
    sent = time.monotonic()
    code, rest = finish(process, seconds=30)
    lines = seen + rest
    assert code == 130, "\n".join(lines)
    assert time.monotonic() - sent < 30
    assert [line for line in lines if not line.startswith("imgclass: ")] \
        == [], "\n".join(lines)
    assert [line for line in lines if "interrupted" in line] == [
        "imgclass: interrupted: nothing published"]
    assert not output.exists()
    assert left_running(process.pid) == []  # the workers stopped too


def hostile_files(folder):
    """Files that Pillow warns about and that become error rows."""
    os.makedirs(folder)
    with open(os.path.join(folder, "bomb.png"), "wb") as handle:
        # 100 million pixels: over Pillow's warning limit, under the
        # --max-pixels the test gives; the data is far too short.
        handle.write(png_bomb(10000, 10000))
    tiff, jpeg = io.BytesIO(), io.BytesIO()
    Image.new("L", (32, 32), 9).save(tiff, "TIFF")
    with open(os.path.join(folder, "cut.tiff"), "wb") as handle:
        handle.write(tiff.getvalue()[:40])  # cut inside its tag directory
    Image.new("L", (64, 64), 128).save(jpeg, "JPEG")
    with open(os.path.join(folder, "truncated.jpg"), "wb") as handle:
        handle.write(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    return sorted(os.path.join(folder, name) for name in os.listdir(folder))


@pytest.mark.parametrize("beam_args", [[], WORKERS],
                         ids=["in-process", "worker-processes"])
def test_stderr_holds_only_imgclass_lines(tmp_path, beam_args):
    inputs = tmp_path / "in"
    shutil.copytree(os.path.join(SAMPLES, "more"), inputs)
    hostile = hostile_files(str(inputs / "hostile"))
    args = ["classify", "--input", inputs, "--max-pixels", 200_000_000,
            *beam_args]
    code, lines = finish(start(*args, "--output", tmp_path / "out"))
    assert code == 0, "\n".join(lines)
    assert lines and all(line.startswith("imgclass: ") for line in lines), \
        "\n".join(lines)
    errors = pq.read_table(tmp_path / "out" / "errors").to_pylist()
    assert sorted(row["path"] for row in errors) == hostile
    # -q: errors only, and there are none.
    code, lines = finish(start("-q", *args, "--output", tmp_path / "quiet"))
    assert (code, lines) == (0, [])


def test_quiet_leaves_errors(cli, tmp_path):
    code, out, err = cli("classify", "-q", "--input", tmp_path / "missing",
                         "--output", tmp_path / "out")
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("imgclass: error: ")


@pytest.fixture
def stuck_worker():
    """A local worker process as the runner starts it, connected to a
    control endpoint that never sends it anything: a worker the runner
    does not stop (Beam's FnApiRunner can miss one that is still starting
    when the run is interrupted, then waits on it forever)."""
    import socket

    from pipeline.worker import COMMAND

    with socket.socket() as silent:
        silent.bind(("localhost", 0))
        silent.listen()
        endpoint = f'url: "localhost:{silent.getsockname()[1]}"'
        env = dict(os.environ, CONTROL_API_SERVICE_DESCRIPTOR=endpoint,
                   LOGGING_API_SERVICE_DESCRIPTOR=endpoint,
                   PIPELINE_OPTIONS="{}")
        worker = subprocess.Popen(COMMAND, shell=True, env=env,
                                  stderr=subprocess.DEVNULL)
        silent.settimeout(60)
        connected, _ = silent.accept()  # the worker is up and waiting
        try:
            yield worker
        finally:
            if worker.poll() is None:
                worker.kill()
            worker.wait()
            connected.close()


def exits_within(process, seconds):
    try:
        return process.wait(seconds)
    except subprocess.TimeoutExpired:
        return "still running"


def test_a_worker_left_running_exits_after_ctrl_c(stuck_worker):
    """A terminal's Ctrl-C reaches every process of the job: a worker the
    command fails to stop exits by itself within its grace time."""
    from pipeline.worker import STOP_GRACE_SECONDS

    started = time.monotonic()
    stuck_worker.send_signal(signal.SIGINT)
    assert exits_within(stuck_worker, STOP_GRACE_SECONDS + 20) == 130
    assert time.monotonic() - started >= STOP_GRACE_SECONDS - 0.5


def test_a_ctrl_c_the_kernel_gives_to_another_thread_still_stops_a_worker(
        stuck_worker):
    """The kernel hands a process's signal to any of its threads. One given
    to a gRPC thread while the worker's main thread waited, without a
    timeout, for its channel left the worker running for good (Python runs
    handlers in the main thread only): about one run in six under load."""
    import ctypes

    from pipeline.worker import STOP_GRACE_SECONDS

    tgkill = getattr(ctypes.CDLL(None, use_errno=True), "tgkill", None)
    if tgkill is None:
        pytest.skip("no tgkill in this C library")
    pid = stuck_worker.pid
    others = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")
                    if int(t) != pid)
    assert others, "the worker runs gRPC threads"
    assert tgkill(pid, others[0], signal.SIGINT) == 0
    assert exits_within(stuck_worker, STOP_GRACE_SECONDS + 20) == 130


def test_a_stop_sent_to_the_command_alone_reaches_its_workers(stuck_worker):
    """A scheduler's SIGTERM reaches the command only; the command passes
    it on to its local worker processes (the worker is this test
    process's child, as it is the command's)."""
    from pipeline.worker import STOP_GRACE_SECONDS, stop_local_workers

    stop_local_workers()
    assert exits_within(stuck_worker, STOP_GRACE_SECONDS + 20) == 143
