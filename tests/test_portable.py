"""The portable path that Flink and Spark use, proven locally: a separate
Beam worker pool process runs the workers; the rows are the same."""

import os
import signal
import socket
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from tests.conftest import write_bad_files, write_digits
from transforms import progress


def free_port():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.fixture
def worker_pool(tmp_path):
    port = free_port()
    env = dict(os.environ)
    # The pool starts workers as "python ..." from PATH: this environment's.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    log = open(tmp_path / "pool.log", "wb")
    pool = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
         f"--service_port={port}"], env=env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("localhost", port)) == 0:
                break
        assert pool.poll() is None, (tmp_path / "pool.log").read_text()
        time.sleep(0.1)
    yield port
    os.killpg(pool.pid, signal.SIGTERM)
    pool.wait(timeout=30)
    log.close()


def rows(output):
    table = pq.read_table(os.path.join(output, "predictions"))
    # Scores rounded: a batch of other images may sum in another order.
    return sorted(zip(table.column("path").to_pylist(),
                      table.column("label").to_pylist(),
                      [round(c, 4) for c in
                       table.column("confidence").to_pylist()]))


def test_portable_runner_with_an_external_worker_pool(worker_pool, tmp_path,
                                                      split):
    folder = str(tmp_path / "images")
    write_digits(folder, split, 30)
    write_bad_files(os.path.join(folder, "bad"))
    local, portable = str(tmp_path / "local"), str(tmp_path / "portable")
    assert main(["classify", "--input", folder, "--output", local]) == 0
    done_here = progress.done_in_process()

    assert main(["classify", "--input", folder, "--output", portable,
                 "--runner=PortableRunner", "--job_endpoint=embed",
                 "--environment_type=EXTERNAL",
                 f"--environment_config=localhost:{worker_pool}"]) == 0
    # Nothing was classified in this process: the pool's workers did it.
    assert progress.done_in_process() == done_here
    assert rows(portable) == rows(local)
    errors = pq.read_table(os.path.join(portable, "errors"))
    assert errors.num_rows == 6
    assert os.path.exists(os.path.join(portable, "_SUCCESS"))
