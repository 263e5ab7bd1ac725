"""Start-up of ``--skip-done`` on an object store: checking the footers of
the ledger and error files of many earlier runs.

An in-memory object store (tests/object_store.py) with a fixed delay per
opened object stands in for GCS or S3 (one round trip to open; reads
themselves cost nothing here, so the bytes read are reported instead).

    python bench/done_files.py [--files 200] [--rows 5000] [--open-ms 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import outputs  # noqa: E402
from tests import object_store  # noqa: E402
from tests.test_incremental import _ledger_objects  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--open-ms", type=float, default=30.0)
    args = parser.parse_args()
    objects = _ledger_objects(object_store.Bucket, files=args.files,
                              rows=args.rows)
    opened = object_store.Bucket._opened.__func__

    def slow_open(cls):
        time.sleep(args.open_ms / 1000)
        opened(cls)

    object_store.Bucket._opened = classmethod(slow_open)
    started = time.perf_counter()
    outputs.check_done_files("memstore://b/out")
    seconds = time.perf_counter() - started
    print(f"{len(objects)} files, {sum(map(len, objects.values())) / 1e6:.1f}"
          f" MB: checked in {seconds:.2f} s, "
          f"{object_store.Bucket.bytes_read / 1e6:.1f} MB read "
          f"({args.open_ms:g} ms per opened object)")


if __name__ == "__main__":
    main()
