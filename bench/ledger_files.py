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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
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
