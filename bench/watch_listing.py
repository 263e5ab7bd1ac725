"""What one look at its inputs costs ``imgclass watch``: it lists every
input pattern whole every ``--interval`` and compares each file with the
ledger (``pipeline.watch._new_files``), so the cost grows with the files
the watched folder holds, not with the files that arrive.

Makes ``--files`` empty files in a temporary folder, then times looks at
``FOLDER/*.jpg`` (best of ``--looks``), with none of the files done and
with all of them done (a ledger holding every file, as after they were
classified).

    python bench/watch_listing.py [--files 100000] [--looks 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import inputs, watch  # noqa: E402
from transforms.skip import file_key  # noqa: E402


def look(pattern: str, output: str, done: dict, looks: int) -> tuple:
    """``(best seconds, files new)`` of ``looks`` looks at ``pattern``."""
    times, new = [], []
    for _ in range(looks):
        started = time.perf_counter()
        new = watch._new_files([pattern], 0.0, done, inputs.excluded(output),
                               time.time() + 3600)
        times.append(time.perf_counter() - started)
    return min(times), len(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--looks", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        watched = os.path.join(folder, "in")
        os.makedirs(watched)
        for n in range(args.files):
            open(os.path.join(watched, f"{n:07d}.jpg"), "wb").close()
        pattern, output = os.path.join(watched, "*.jpg"), os.path.join(
            folder, "out")
        seconds, new = look(pattern, output, {}, args.looks)
        print(f"{args.files:,} files, none done: {seconds:.2f} s per look "
              f"({new:,} new)")
        from apache_beam.io.filesystems import FileSystems
        done = {}
        for m in FileSystems.match([pattern])[0].metadata_list:
            done.setdefault(m.path, set()).add(file_key(m))
        seconds, new = look(pattern, output, done, args.looks)
        print(f"{args.files:,} files, all done: {seconds:.2f} s per look "
              f"({new:,} new)")


if __name__ == "__main__":
    main()
