"""What one look at its inputs costs ``imgclass watch``: it lists every
input pattern whole every ``--interval`` and compares each file with the
ledger (``pipeline.watch._new_files``), so the cost grows with the files
the watched folder holds, not with the files that arrive.

Makes ``--files`` empty files in a temporary folder, then times looks at
``FOLDER/*.jpg`` (best of ``--looks``), with none of the files done and
with all of them done (a ledger holding every file, as after they were
classified).

``--done-memory N`` instead measures what the watcher keeps of a ledger of
N rows between windows (``pipeline.done_files.DoneFiles``), against the
dictionary of paths it kept before (``{path: {(size, mtime)}}``, built here
from the same rows as the reference): memory allocated (tracemalloc) and
seconds to read the ledger and to check N listed files.

    python bench/watch_listing.py [--files 100000] [--looks 3]
    python bench/watch_listing.py --done-memory 1000000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from apache_beam.io.filesystem import FileMetadata  # noqa: E402

from pipeline import inputs, outputs, watch  # noqa: E402
from pipeline.done_files import DoneFiles  # noqa: E402
from transforms.skip import file_key  # noqa: E402

MODEL = types.SimpleNamespace(name="digits-cnn", version=1)


def look(pattern: str, output: str, done: DoneFiles, looks: int) -> tuple:
    """``(best seconds, files new)`` of ``looks`` looks at ``pattern``."""
    times, new = [], []
    for _ in range(looks):
        started = time.perf_counter()
        new = watch._new_files([pattern], 0.0, done, inputs.excluded(output),
                               time.time() + 3600,
                               watch._FutureFiles(sys.stderr))
        times.append(time.perf_counter() - started)
    return min(times), len(new)


def write_ledger(path: str, files: list) -> None:
    """A ledger file with a row of MODEL for each ``FileMetadata``."""
    pq.write_table(pa.table({
        "path": [m.path for m in files],
        "size": pa.array([m.size_in_bytes for m in files], pa.int64()),
        "mtime": [m.last_updated_in_seconds for m in files],
        "model_name": [MODEL.name] * len(files),
        "model_version": [str(MODEL.version)] * len(files)}), path)


def listing_looks(files: int, looks: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        watched = os.path.join(folder, "in")
        os.makedirs(watched)
        for n in range(files):
            open(os.path.join(watched, f"{n:07d}.jpg"), "wb").close()
        pattern, output = os.path.join(watched, "*.jpg"), os.path.join(
            folder, "out")
        seconds, new = look(pattern, output, DoneFiles(), looks)
        print(f"{files:,} files, none done: {seconds:.2f} s per look "
              f"({new:,} new)")
        from apache_beam.io.filesystems import FileSystems
        ledger = os.path.join(folder, "ledger.parquet")
        write_ledger(ledger, FileSystems.match([pattern])[0].metadata_list)
        done = DoneFiles()
        done.add_ledger([ledger], MODEL)
        seconds, new = look(pattern, output, done, looks)
        print(f"{files:,} files, all done: {seconds:.2f} s per look "
              f"({new:,} new)")


def _dictionary(ledger: str) -> dict:
    """The reference: what the watcher kept before DoneFiles."""
    done = {}
    for row in outputs.read_table([ledger], ["path", "size", "mtime",
                                             "model_name",
                                             "model_version"]).to_pylist():
        if (row["model_name"], row["model_version"]) == (
                MODEL.name, str(MODEL.version)):
            done.setdefault(row["path"], set()).add(
                (int(row["size"]), float(row["mtime"])))
    return done


def _measured(build) -> tuple:
    """``(result, MB allocated and still held, MB at the peak, seconds)``."""
    tracemalloc.start()
    started = time.perf_counter()
    result = build()
    seconds = time.perf_counter() - started
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, held / 2**20, peak / 2**20, seconds


def done_memory(rows: int) -> None:
    files = [FileMetadata(f"/data/incoming/2026-11-{n % 28 + 1:02d}/"
                          f"camera-{n % 97:02d}/IMG_{n:08d}.jpg",
                          100_000 + n % 5_000, 1_790_000_000.0 + n)
             for n in range(rows)]
    with tempfile.TemporaryDirectory() as folder:
        ledger = os.path.join(folder, "ledger.parquet")
        write_ledger(ledger, files)
        listed = files[: rows // 2] + [  # half done, half new
            FileMetadata(m.path, m.size_in_bytes + 1,
                         m.last_updated_in_seconds) for m in files[rows // 2:]]
        reference, r_held, r_peak, r_load = _measured(lambda: _dictionary(
            ledger))
        started = time.perf_counter()
        r_new = [m for m in listed
                 if file_key(m) not in reference.get(m.path, ())]
        r_check = time.perf_counter() - started
        del reference

        def build():
            done = DoneFiles()
            done.add_ledger([ledger], MODEL)
            return done
        done, held, peak, load = _measured(build)
        started = time.perf_counter()
        new = done.new(listed)
        check = time.perf_counter() - started
    assert [m.path for m in new] == [m.path for m in r_new]
    print(f"a ledger of {rows:,} rows, then {rows:,} listed files "
          f"({len(new):,} new):")
    print(f"  dictionary of paths (before): held {r_held:.1f} MB "
          f"({r_held * 2**20 / rows:.0f} bytes per file), peak "
          f"{r_peak:.1f} MB; reading {r_load:.2f} s, checking {r_check:.2f} s")
    print(f"  DoneFiles (digests): held {held:.1f} MB "
          f"({held * 2**20 / rows:.0f} bytes per file), peak {peak:.1f} MB; "
          f"reading {load:.2f} s, checking {check:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--looks", type=int, default=3)
    parser.add_argument("--done-memory", type=int, metavar="N")
    args = parser.parse_args()
    if args.done_memory:
        done_memory(args.done_memory)
    else:
        listing_looks(args.files, args.looks)


if __name__ == "__main__":
    main()
