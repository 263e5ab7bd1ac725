"""A ``--skip-done`` run on an output whose ledger has grown to many files
(a month of a watcher's windows, or years of nightly runs), with and
without merging them (``pipeline/ledger.py``).

Each figure is the wall time of ``imgclass classify --skip-done`` over the
samples (every file already done) in this process, best of ``--runs``:

* reference: the output of one earlier run (one ledger file);
* many files: the same plus ``--files`` ledger files of ``--rows`` rows,
  merging switched off;
* merging: the same output, merging on: the first run merges, the next
  ones read the merged file.

    python bench/ledger_files.py [--files 1000] [--rows 20] [--runs 3]

With ``--merge-memory``: the time and peak memory of merging 70 ledger
files of 14,000 rows each (about 85 MiB of Parquet, random sha256s), more
than one group of ``ledger.GROUP_BYTES``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import ledger  # noqa: E402
from pipeline.cli import main as imgclass  # noqa: E402
from tests.test_ledger import ledger_names, write_ledgers  # noqa: E402

SAMPLES = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "samples", "digits")


def timed(output: str) -> float:
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = imgclass(["classify", "--input", SAMPLES, "--output", output,
                         "--skip-done", "-q"])
    assert code == 0
    return time.perf_counter() - started


def merge_memory(files: int = 70, rows: int = 14_000) -> None:
    import resource

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from transforms import schema

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as output:
        folder = os.path.join(output, "_ledger")
        os.makedirs(folder)
        for n in range(files):
            pq.write_table(pa.Table.from_pydict({
                "path": [f"gs://bucket/photos/{n}/{i:07d}.jpg"
                         for i in range(rows)],
                "size": rng.integers(1, 10**7, rows),
                "mtime": rng.random(rows) * 1e9,
                "model_name": ["efficientnet-lite0"] * rows,
                "model_version": ["3"] * rows, "run_id": [f"run-{n}"] * rows,
                "sha256": [rng.bytes(32).hex() for _ in range(rows)],
                "retried_stage": [None] * rows}, schema=schema.LEDGER),
                os.path.join(folder, f"part-{n:03d}.parquet"))
        size = sum(os.path.getsize(os.path.join(folder, name))
                   for name in os.listdir(folder))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        started = time.perf_counter()
        merged = ledger.compact(output)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{merged} ledger files ({size / 2**20:.1f} MiB) merged into "
              f"{len(os.listdir(folder))} in {seconds:.2f} s; peak RSS "
              f"{before:.0f} -> {after:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--merge-memory", action="store_true")
    args = parser.parse_args()
    if args.merge_memory:
        return merge_memory()
    with tempfile.TemporaryDirectory() as folder:
        reference = os.path.join(folder, "reference")
        timed(reference)  # the earlier run (and this process's warm-up)
        grown = os.path.join(folder, "grown")
        shutil.copytree(reference, grown)
        write_ledgers(grown, args.files, rows=args.rows)
        threshold = ledger.COMPACT_FILES
        ledger.COMPACT_FILES = 10**9
        many = [timed(grown) for _ in range(args.runs)]
        ledger.COMPACT_FILES = threshold
        first = timed(grown)
        files = len(ledger_names(grown))
        merged = [timed(grown) for _ in range(args.runs)]
        plain = [timed(reference) for _ in range(args.runs)]
    rows = [("reference (1 ledger file)", min(plain), ""),
            (f"{args.files + 1} ledger files, not merged", min(many), ""),
            ("the run that merges them", first,
             f"; {files} ledger files after it"),
            ("runs after the merge", min(merged), "")]
    print(f"--skip-done over {SAMPLES} (all done), best of {args.runs}:")
    for name, seconds, note in rows:
        print(f"  {name:<34} {seconds:6.2f} s  "
              f"({seconds / min(plain):.2f}x{note})")

if __name__ == "__main__":
    main()
